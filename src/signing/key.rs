//! [`SigningKey`]: a local private key (RSA, P-256, Ed25519) or an HMAC secret.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::certificate::{self, Thumbprints};
use super::kinds::invalid;
use super::pair::KeyPair;
use super::parse::{self, JwkKey, Material};
use super::{Backend, Signer, SigningAlgorithm};
use crate::error::{Error, Result};

/// A private key that signs JWTs: RSA (RS256 by default, PS256 on request), EC P-256
/// (ES256), Ed25519 (EdDSA), or an HMAC secret (HS256).
///
/// - [`from_pem`](Self::from_pem) reads PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1
///   (`BEGIN RSA PRIVATE KEY`) and SEC1 (`BEGIN EC PRIVATE KEY`) PEM, tells the key types
///   apart, and finds the key among other blocks (OpenSSL's `EC PARAMETERS`, a key +
///   certificate bundle); [`from_pem_file`](Self::from_pem_file) re-reads its file when it
///   changes; [`from_jwk`](Self::from_jwk) reads a private JWK;
///   [`from_secret`](Self::from_secret) takes an HMAC secret.
/// - [`with_key_id`](Self::with_key_id) sets the `kid` header;
///   [`with_algorithm`](Self::with_algorithm) picks PS256 over RS256 for an RSA key;
///   [`with_certificate`](Self::with_certificate) adds the certificate's `x5t#S256`
///   thumbprint, which Microsoft Entra wants for certificate credentials.
/// - The key is parsed once into the signing backend's key pair (aws-lc-rs with the
///   `aws-lc` feature, else RustCrypto; see the [`signing`](crate::signing) module).
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
/// let key = SigningKey::from_pem(pem)?.with_key_id("key-1")?;
/// assert_eq!(key.signing_algorithm(), SigningAlgorithm::EdDSA);
/// assert_eq!(key.public_jwk().unwrap()["kty"], "OKP");
/// assert!(!format!("{key:?}").contains("MC4CAQ"));
/// # Ok::<(), token_refresh::Error>(())
/// ```
///
/// # Microsoft Entra certificate credentials
///
/// Entra's `private_key_jwt` wants PS256 (or RS256) and the certificate's SHA-256
/// thumbprint in `x5t#S256`; the key and certificate often come as one PEM bundle:
///
/// ```no_run
/// use token_refresh::{ClientAuth, ClientCredentials, SigningAlgorithm, SigningKey, TokenProvider};
///
/// # fn main() -> Result<(), token_refresh::Error> {
/// let bundle = std::fs::read("/etc/my-app/entra-cert.pem").expect("the bundle"); // key + certificate
/// let key = SigningKey::from_pem(&bundle)?
///     .with_algorithm(SigningAlgorithm::PS256)?
///     .with_certificate(&bundle)?;
/// let tenant = "00000000-0000-0000-0000-000000000000";
/// let provider = TokenProvider::new(
///     ClientCredentials::with_client_auth(
///         format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
///         "my-app-client-id",
///         ClientAuth::private_key_jwt(key), // no secret: the assertion authenticates
///     )
///     .scope("https://graph.microsoft.com/.default"),
/// );
/// # drop(provider); Ok(()) }
/// ```
#[derive(Clone)]
pub struct SigningKey {
    algorithm: SigningAlgorithm,
    key_id: Option<Arc<str>>,
    certificate: Option<Arc<Thumbprints>>,
    /// Whether `x5t` (SHA-1) goes in the header beside `x5t#S256`.
    sha1_thumbprint: bool,
    source: Arc<Source>,
}

enum Source {
    Loaded(Arc<KeyPair>),
    File {
        path: PathBuf,
        backend: Backend,
        current: Mutex<(Stamp, Arc<KeyPair>)>,
    },
}

/// What identifies a version of a key file: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

impl SigningKey {
    /// Reads a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`; RSA, EC P-256 or Ed25519),
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`, P-256), alone or
    /// among other blocks (parameters, certificates). The algorithm follows the key: RS256
    /// (PS256 for a key marked RSASSA-PSS), ES256 or EdDSA. An empty text, no private key
    /// or two of them, an encrypted key, another curve, corrupt data or an RSA key under
    /// 2048 bits is an [`Error::InvalidKey`] saying so.
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Self> {
        Self::from_pem_on(pem, Backend::DEFAULT)
    }

    /// [`from_pem`](Self::from_pem) on the given backend, for the crate's tests and
    /// benchmarks, which compare the two.
    #[doc(hidden)]
    pub fn from_pem_on(pem: impl AsRef<[u8]>, backend: Backend) -> Result<Self> {
        let material = parse::parse_private_pem(pem.as_ref())?;
        let pss_only = material.pss_only();
        let key = Self::from_pair(KeyPair::load(&material, backend)?);
        if pss_only {
            return key.with_algorithm(SigningAlgorithm::PS256);
        }
        Ok(key)
    }

    /// Reads a PEM private key (as [`from_pem`](Self::from_pem)) from `path` now, and again
    /// whenever the file's modification time or length changes, so a key rotated on disk (a
    /// Kubernetes secret, a Vault agent template) is used for the next assertion. A file
    /// that cannot be read, is empty or does not hold a usable key is an
    /// [`Error::KeyFile`] naming it; a rotated key must be of the same type (an RSA key
    /// stays RSA), else the next signature fails saying so.
    pub fn from_pem_file(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let backend = Backend::DEFAULT;
        let (stamp, pair) = read_key_file(&path, backend)?;
        Ok(Self {
            algorithm: pair.kind().default_algorithm(),
            key_id: None,
            certificate: None,
            sha1_thumbprint: false,
            source: Arc::new(Source::File {
                path,
                backend,
                current: Mutex::new((stamp, Arc::new(pair))),
            }),
        })
    }

    /// Reads a private JWK (RFC 7517): `kty` `RSA` (with `n`, `e`, `d`, `p`, `q`, `dp`,
    /// `dq`, `qi`), `EC` with `crv` `P-256` (`x`, `y`, `d`), `OKP` with `crv` `Ed25519`
    /// (`x`, `d`), or `oct` (`k`, an HMAC secret). Its `kid` and `alg`, when present, become
    /// the key's; a JWK without its private part (`d`, or `k`), or whose public members do
    /// not belong to its private ones, is an [`Error::InvalidKey`] saying so.
    pub fn from_jwk(jwk: &str) -> Result<Self> {
        let jwk = Zeroizing::new(jwk.to_owned());
        let value: Value =
            serde_json::from_str(&jwk).map_err(|_| invalid("the JWK is not a JSON object"))?;
        let mut key = match parse::parse_jwk(&value)? {
            JwkKey::Secret(secret) => Self::from_secret(&*secret)?,
            JwkKey::Asymmetric { material, public } => {
                let pair = KeyPair::load(&material, Backend::DEFAULT)?;
                if let Some(public) = public
                    && pair.public() != Some(&public)
                {
                    return Err(invalid(match material {
                        Material::P256 { .. } => "the EC JWK's x and y do not belong to its d",
                        _ => "the JWK's public members do not belong to its private ones",
                    }));
                }
                Self::from_pair(pair)
            }
        };
        if let Some(kid) = value.get("kid").and_then(Value::as_str) {
            key = key.with_key_id(kid)?;
        }
        if let Some(alg) = value.get("alg").and_then(Value::as_str) {
            let algorithm = SigningAlgorithm::from_name(alg).ok_or_else(|| {
                invalid(format!(
                    "the JWK's alg {alg:?} is not one of HS256, RS256, PS256, ES256, EdDSA"
                ))
            })?;
            key = key.with_algorithm(algorithm)?;
        }
        Ok(key)
    }

    /// An HMAC secret for HS256 (`client_secret_jwt`, or a server that shares a secret). An
    /// empty secret is an [`Error::InvalidKey`].
    pub fn from_secret(secret: impl AsRef<[u8]>) -> Result<Self> {
        Ok(Self::from_pair(KeyPair::hmac(secret.as_ref())?))
    }

    fn from_pair(pair: KeyPair) -> Self {
        Self {
            algorithm: pair.kind().default_algorithm(),
            key_id: None,
            certificate: None,
            sha1_thumbprint: false,
            source: Arc::new(Source::Loaded(Arc::new(pair))),
        }
    }

    /// Sets the `kid` header of what this key signs, which the server uses to find the key
    /// (Google's `private_key_id`, the key name registered with the server). An empty `kid`
    /// is an [`Error::InvalidKey`] (an unset variable, most likely). Default: none, or the
    /// JWK's `kid`.
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Result<Self> {
        let kid = kid.into();
        if kid.trim().is_empty() {
            return Err(invalid("the key id (kid) is empty"));
        }
        self.key_id = Some(Arc::from(kid));
        Ok(self)
    }

    /// Picks the algorithm: PS256 instead of RS256 for an RSA key; for the other keys there
    /// is one. An algorithm the key cannot sign is an [`Error::InvalidKey`]. Default: RS256
    /// for RSA (PS256 for a key marked RSASSA-PSS), ES256 for P-256, EdDSA for Ed25519,
    /// HS256 for a secret.
    pub fn with_algorithm(mut self, algorithm: SigningAlgorithm) -> Result<Self> {
        let kind = self.loaded().kind();
        if !kind.signs(algorithm) {
            return Err(kind.cannot_sign(algorithm));
        }
        self.algorithm = algorithm;
        Ok(self)
    }

    /// Names the key's X.509 certificate in every header this key signs: `x5t#S256`, the
    /// base64url SHA-256 thumbprint of its DER (what Microsoft Entra wants for certificate
    /// credentials). `pem` holds the certificate, alone, in a chain, or in a key +
    /// certificate bundle; the one whose public key is this key's is used. No such
    /// certificate, an expired one, or an HMAC secret is an [`Error::InvalidKey`] saying so.
    /// A key read from a file keeps this certificate when the file is rotated. Default: no
    /// certificate.
    pub fn with_certificate(mut self, pem: impl AsRef<[u8]>) -> Result<Self> {
        let pair = self.loaded();
        let public = pair
            .public()
            .ok_or_else(|| invalid("an HMAC secret has no certificate"))?;
        let thumbprints = certificate::thumbprints_for(pem.as_ref(), public)?;
        self.certificate = Some(Arc::new(thumbprints));
        Ok(self)
    }

    /// Also puts the certificate's SHA-1 thumbprint in the header as `x5t` (RFC 7515
    /// §4.1.7), for servers that still look certificates up by it (older Entra and AD FS
    /// set-ups). Needs [`with_certificate`](Self::with_certificate) first, else it is an
    /// [`Error::InvalidKey`]. Default: `x5t#S256` only.
    pub fn with_sha1_thumbprint(mut self, on: bool) -> Result<Self> {
        if on && self.certificate.is_none() {
            return Err(invalid(
                "x5t needs the certificate: call with_certificate first",
            ));
        }
        self.sha1_thumbprint = on;
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
        let mut jwk = self.loaded().public()?.jwk();
        jwk["alg"] = json!(self.algorithm.name());
        jwk["use"] = json!("sig");
        if let Some(kid) = &self.key_id {
            jwk["kid"] = json!(&**kid);
        }
        Some(jwk)
    }

    /// The key as last loaded, without looking at its file.
    pub(crate) fn loaded(&self) -> Arc<KeyPair> {
        match &*self.source {
            Source::Loaded(pair) => Arc::clone(pair),
            Source::File { current, .. } => Arc::clone(&lock(current).1),
        }
    }

    /// The key to sign with now: for a file key, re-read if the file changed.
    fn current(&self) -> Result<Arc<KeyPair>> {
        let Source::File {
            path,
            backend,
            current,
        } = &*self.source
        else {
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
        let (stamp, fresh) = read_key_file(path, *backend)?;
        if fresh.kind() != loaded.kind() {
            return Err(Error::KeyFile {
                path: path.clone(),
                problem: format!(
                    "now holds {}, but it held {} and signs {}: a rotated key must be of the \
                     same type",
                    fresh.kind().name(),
                    loaded.kind().name(),
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

fn read_key_file(path: &Path, backend: Backend) -> Result<(Stamp, KeyPair)> {
    let problem = |problem: String| Error::KeyFile {
        path: path.to_owned(),
        problem,
    };
    let stamp = stamp(path)?;
    let pem =
        Zeroizing::new(std::fs::read(path).map_err(|e| problem(format!("cannot read: {e}")))?);
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Err(problem("the key file is empty".into()));
    }
    let pair = parse::parse_private_pem(&pem)
        .and_then(|material| KeyPair::load(&material, backend))
        .map_err(|e| match e {
            Error::InvalidKey { problem: p } => problem(p),
            other => other,
        })?;
    Ok((stamp, pair))
}

#[async_trait::async_trait]
impl Signer for SigningKey {
    fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    fn x5t_s256(&self) -> Option<&str> {
        self.certificate.as_ref().map(|c| c.s256.as_str())
    }

    fn x5t(&self) -> Option<&str> {
        self.certificate
            .as_ref()
            .filter(|_| self.sha1_thumbprint)
            .map(|c| c.sha1.as_str())
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.current()?.sign(self.algorithm, message)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("SigningKey");
        s.field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id.as_deref())
            .field("x5t#S256", &self.x5t_s256());
        if let Source::File { path, .. } = &*self.source {
            s.field("file", path);
        }
        s.field("key", &"[REDACTED]").finish()
    }
}
