//! Signing keys: every algorithm for the JWT-bearer grant and for client assertions against
//! the emulator's registered keys, algorithm confusion and replays refused, key files
//! rotated on disk, signers that count, hang or fail, and our assertions verified by a JOSE
//! library the crate does not use (jsonwebtoken).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use token_refresh::{
    ClientAuth, ClientCredentials, Error, JwtBearer, Signer, SigningAlgorithm, SigningKey,
    TokenEndpoint, TokenProvider,
};
use token_refresh_emulator::Emulator;

const ISSUER: &str = "robot@example.com";

fn pem(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn key(name: &str, kid: &str) -> SigningKey {
    SigningKey::from_pem(pem(name))
        .unwrap()
        .with_key_id(kid)
        .unwrap()
}

/// Every algorithm, from every PEM form.
fn keys() -> Vec<(SigningKey, SigningAlgorithm)> {
    vec![
        (key("rsa-pkcs8.pem", "rs256"), SigningAlgorithm::RS256),
        (key("rsa-pkcs1.pem", "rs256-pkcs1"), SigningAlgorithm::RS256),
        (
            key("rsa-pkcs8.pem", "ps256")
                .with_algorithm(SigningAlgorithm::PS256)
                .unwrap(),
            SigningAlgorithm::PS256,
        ),
        (key("ec-pkcs8.pem", "es256"), SigningAlgorithm::ES256),
        (key("ec-sec1.pem", "es256-sec1"), SigningAlgorithm::ES256),
        (key("ed25519.pem", "eddsa"), SigningAlgorithm::EdDSA),
    ]
}

/// Two tokens in a row, each from a fresh assertion: with the emulator's replay check on, the
/// second passes only if its `jti` is new.
async fn two_tokens(provider: &TokenProvider, algorithm: SigningAlgorithm) {
    let first = provider
        .token()
        .await
        .unwrap_or_else(|e| panic!("{algorithm}: {e}"));
    provider.invalidate(&first);
    provider
        .token()
        .await
        .unwrap_or_else(|e| panic!("{algorithm}: {e}"));
}

#[tokio::test]
async fn jwt_bearer_with_every_algorithm_gets_a_token_from_the_emulator() {
    let emulator = Emulator::start().await.unwrap();
    emulator.check_replays(true);
    for (key, algorithm) in keys() {
        assert_eq!(key.signing_algorithm(), algorithm);
        let jwk = key.public_jwk().unwrap();
        assert_eq!(jwk["alg"], algorithm.name());
        emulator.register_key(ISSUER, &jwk).unwrap();
        let provider = TokenProvider::new(
            JwtBearer::signed_by(emulator.token_url(), ISSUER, key)
                .subject(ISSUER)
                .claim("tenant", "t-1"),
        );
        two_tokens(&provider, algorithm).await;
    }
    let stats = emulator.stats();
    assert_eq!(stats.token_successes, 12);
    assert_eq!(stats.token_failures, 0);
}

#[tokio::test]
async fn an_assertion_for_another_issuer_or_an_unregistered_key_is_refused() {
    let emulator = Emulator::start().await.unwrap();
    let registered = key("ec-pkcs8.pem", "es256");
    emulator
        .register_key(ISSUER, &registered.public_jwk().unwrap())
        .unwrap();

    let other_issuer =
        JwtBearer::signed_by(emulator.token_url(), "mallory@example.com", registered);
    let error = TokenProvider::new(other_issuer).token().await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_grant"), "{error}");

    // Another key under the registered kid: the signature does not verify.
    let impostor = key("ec2-pkcs8.pem", "es256");
    let error = TokenProvider::new(JwtBearer::signed_by(emulator.token_url(), ISSUER, impostor))
        .token()
        .await
        .unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_grant"), "{error}");
    assert!(error.to_string().contains("signature"), "{error}");

    let unknown = key("ed25519.pem", "never-registered");
    let error = TokenProvider::new(JwtBearer::signed_by(emulator.token_url(), ISSUER, unknown))
        .token()
        .await
        .unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_grant"), "{error}");
    assert_eq!(emulator.stats().token_successes, 0);
}

/// The classic confusion: a key registered as RS256, and an assertion signed HS256 with the
/// public key as the HMAC secret. Refused, for the grant and for client authentication.
#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let emulator = Emulator::start().await.unwrap();
    let rsa = key("rsa-pkcs8.pem", "rsa-key");
    emulator
        .register_key(ISSUER, &rsa.public_jwk().unwrap())
        .unwrap();
    emulator
        .register_key(
            emulator.client_id(),
            &key("rsa-pkcs1.pem", "client-rsa").public_jwk().unwrap(),
        )
        .unwrap();
    let public_pem = pem("rsa-public.pem");

    let forged = SigningKey::from_secret(public_pem.as_bytes())
        .unwrap()
        .with_key_id("rsa-key")
        .unwrap();
    assert_eq!(forged.signing_algorithm(), SigningAlgorithm::HS256);
    let error = TokenProvider::new(JwtBearer::signed_by(emulator.token_url(), ISSUER, forged))
        .token()
        .await
        .unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_grant"), "{error}");
    assert!(error.to_string().contains("HS256"), "{error}");

    let forged = SigningKey::from_secret(public_pem.as_bytes())
        .unwrap()
        .with_key_id("client-rsa")
        .unwrap();
    let source = ClientCredentials::with_client_auth(
        emulator.token_url(),
        emulator.client_id(),
        ClientAuth::private_key_jwt(forged),
    );
    let error = TokenProvider::new(source).token().await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_client"), "{error}");
    assert_eq!(emulator.stats().token_successes, 0);
}

#[tokio::test]
async fn private_key_jwt_with_every_algorithm_and_client_secret_jwt_authenticate_the_client() {
    let emulator = Emulator::start().await.unwrap();
    emulator.check_replays(true);
    for (key, algorithm) in keys() {
        emulator
            .register_key(emulator.client_id(), &key.public_jwk().unwrap())
            .unwrap();
        let source = ClientCredentials::with_client_auth(
            emulator.token_url(),
            emulator.client_id(),
            ClientAuth::private_key_jwt(key),
        )
        .scope("read:devices");
        two_tokens(&TokenProvider::new(source), algorithm).await;
    }

    let secret_jwt = ClientCredentials::with_client_auth(
        emulator.token_url(),
        emulator.client_id(),
        ClientAuth::client_secret_jwt(emulator.client_secret()),
    );
    TokenProvider::new(secret_jwt).token().await.unwrap();

    let wrong_secret = ClientCredentials::with_client_auth(
        emulator.token_url(),
        emulator.client_id(),
        ClientAuth::client_secret_jwt("not-the-client-secret"),
    );
    let error = TokenProvider::new(wrong_secret).token().await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_client"), "{error}");

    let empty = ClientCredentials::with_client_auth(
        emulator.token_url(),
        emulator.client_id(),
        ClientAuth::client_secret_jwt(""),
    );
    let error = TokenProvider::new(empty).token().await.unwrap_err();
    assert!(
        matches!(
            error.last_attempt(),
            Error::EmptyCredential {
                field: "client_secret"
            }
        ),
        "{error:?}"
    );
    let stats = emulator.stats();
    assert_eq!(stats.token_successes, 13);
    assert_eq!(stats.token_requests, 14, "the empty secret sent nothing");
}

/// A signer that records what it signed, so a test can replay the assertion.
#[derive(Debug)]
struct Recording {
    key: SigningKey,
    calls: AtomicUsize,
    last: std::sync::Mutex<Option<String>>,
}

impl Recording {
    fn new(key: SigningKey) -> Self {
        Self {
            key,
            calls: AtomicUsize::new(0),
            last: Default::default(),
        }
    }
}

#[token_refresh::async_trait]
impl Signer for Recording {
    fn algorithm(&self) -> SigningAlgorithm {
        self.key.signing_algorithm()
    }
    fn key_id(&self) -> Option<&str> {
        Signer::key_id(&self.key)
    }
    fn x5t_s256(&self) -> Option<&str> {
        self.key.x5t_s256()
    }
    fn x5t(&self) -> Option<&str> {
        self.key.x5t()
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        use base64::Engine as _;
        self.calls.fetch_add(1, Ordering::SeqCst);
        let signature = self.key.sign(message).await?;
        let jwt = format!(
            "{}.{}",
            std::str::from_utf8(message).unwrap(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&signature)
        );
        *self.last.lock().unwrap() = Some(jwt);
        Ok(signature)
    }
}

#[tokio::test]
async fn a_replayed_assertion_is_refused_when_replays_are_checked() {
    let emulator = Emulator::start().await.unwrap();
    emulator.check_replays(true);
    let key = key("ed25519.pem", "eddsa");
    emulator
        .register_key(ISSUER, &key.public_jwk().unwrap())
        .unwrap();
    let signer = Arc::new(Recording::new(key));
    let source = JwtBearer::signed_by(emulator.token_url(), ISSUER, ArcSigner(Arc::clone(&signer)));
    TokenProvider::new(source).token().await.unwrap();
    let used = signer.last.lock().unwrap().clone().unwrap();

    let endpoint = TokenEndpoint::new(emulator.token_url());
    let replay = endpoint
        .request()
        .param("grant_type", JwtBearer::GRANT_TYPE)
        .secret_param("assertion", &used)
        .send()
        .await
        .unwrap_err();
    assert_eq!(replay.oauth_error(), Some("invalid_grant"), "{replay}");
    assert!(replay.to_string().contains("jti"), "{replay}");
    assert_eq!(signer.calls.load(Ordering::SeqCst), 1);
}

/// Lends a shared signer to a grant, so the test keeps a handle on it.
#[derive(Debug)]
struct ArcSigner<S>(Arc<S>);

#[token_refresh::async_trait]
impl<S: Signer> Signer for ArcSigner<S> {
    fn algorithm(&self) -> SigningAlgorithm {
        self.0.algorithm()
    }
    fn key_id(&self) -> Option<&str> {
        self.0.key_id()
    }
    fn x5t_s256(&self) -> Option<&str> {
        self.0.x5t_s256()
    }
    fn x5t(&self) -> Option<&str> {
        self.0.x5t()
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.0.sign(message).await
    }
}

#[tokio::test]
async fn a_kms_signer_is_called_once_per_token_request_not_per_caller() {
    let emulator = Emulator::start().await.unwrap();
    let key = key("ec-pkcs8.pem", "kms-key");
    emulator
        .register_key(ISSUER, &key.public_jwk().unwrap())
        .unwrap();
    let signer = Arc::new(Recording::new(key));
    let provider = TokenProvider::new(JwtBearer::signed_by(
        emulator.token_url(),
        ISSUER,
        ArcSigner(Arc::clone(&signer)),
    ));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.token().await })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap().unwrap());
    }
    assert!(tokens.iter().all(|t| t.ptr_eq(&tokens[0])));
    assert_eq!(signer.calls.load(Ordering::SeqCst), 1);
    provider.invalidate(&tokens[0]);
    provider.token().await.unwrap();
    assert_eq!(signer.calls.load(Ordering::SeqCst), 2);
    assert_eq!(emulator.stats().token_requests, 2);
}

/// A signer that never answers, or fails, counting its calls.
#[derive(Debug)]
struct Broken {
    hang: bool,
    calls: Arc<AtomicUsize>,
}

#[token_refresh::async_trait]
impl Signer for Broken {
    fn algorithm(&self) -> SigningAlgorithm {
        SigningAlgorithm::ES256
    }
    fn key_id(&self) -> Option<&str> {
        Some("kms")
    }
    async fn sign(&self, _: &[u8]) -> Result<Vec<u8>, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(Error::source(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "kms: the caller may not use key kms",
        )))
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_signer_times_out_and_a_failing_one_reports_its_own_error() {
    // Nothing is ever sent: the URL is never reached.
    let url = "http://127.0.0.1:9/oauth2/token";
    let calls = Arc::new(AtomicUsize::new(0));
    let hanging = Broken {
        hang: true,
        calls: Arc::clone(&calls),
    };
    let provider = TokenProvider::new(
        JwtBearer::signed_by(url, ISSUER, hanging).timeout(Duration::from_secs(2)),
    );
    let error = provider.token().await.unwrap_err();
    assert!(
        matches!(error.last_attempt(), Error::SignerTimeout(t) if *t == Duration::from_secs(2)),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        token_refresh::defaults::DEFAULT_MAX_ATTEMPTS as usize,
        "retried like a timeout"
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let failing = Broken {
        hang: false,
        calls: Arc::clone(&calls),
    };
    let error = TokenProvider::new(JwtBearer::signed_by(url, ISSUER, failing))
        .token()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("may not use key kms"), "{error}");
    assert!(
        error.to_string().starts_with("the signer failed: "),
        "says who failed: {error}"
    );
    assert!(matches!(error, Error::Signer { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a permanent error is not retried"
    );
}

#[tokio::test]
async fn a_key_file_rotated_on_disk_signs_the_next_assertion() {
    let emulator = Emulator::start().await.unwrap();
    let dir = tempdir();
    let path = dir.join("key.pem");
    std::fs::write(&path, pem("rsa-pkcs8.pem")).unwrap();
    let key = SigningKey::from_pem_file(&path)
        .unwrap()
        .with_key_id("rotating")
        .unwrap();
    emulator
        .register_key(ISSUER, &key.public_jwk().unwrap())
        .unwrap();
    let provider = TokenProvider::new(JwtBearer::signed_by(
        emulator.token_url(),
        ISSUER,
        key.clone(),
    ));
    let first = provider.token().await.unwrap();

    // The new key is written and registered; the old one is no longer accepted.
    std::fs::write(&path, pem("rsa2-pkcs8.pem")).unwrap();
    let rotated = SigningKey::from_pem(pem("rsa2-pkcs8.pem"))
        .unwrap()
        .with_key_id("rotating")
        .unwrap();
    emulator
        .register_key(ISSUER, &rotated.public_jwk().unwrap())
        .unwrap();
    provider.invalidate(&first);
    provider.token().await.expect("the rotated key signs");
    assert_eq!(
        key.public_jwk(),
        rotated.public_jwk(),
        "the file key is the new one"
    );

    // A key of another type in its place fails the next signature, naming the file.
    std::fs::write(&path, pem("ec-pkcs8.pem")).unwrap();
    let error = key.sign(b"x").await.unwrap_err();
    assert!(
        matches!(&error, Error::KeyFile { path: p, .. } if *p == path),
        "{error:?}"
    );
    assert!(error.to_string().contains("same type"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "token-refresh-keys-{}-{:x}",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[test]
fn unusable_keys_get_errors_that_say_what_is_wrong() {
    let cases = [
        ("ec-encrypted.pem", "encrypted"),
        ("rsa-public.pem", "public key"),
        ("ec-p384.pem", "P-384"),
        ("rsa-1024.pem", "1024 bits"),
    ];
    for (file, says) in cases {
        let error = SigningKey::from_pem(pem(file)).unwrap_err();
        assert!(
            matches!(error, Error::InvalidKey { .. }),
            "{file}: {error:?}"
        );
        assert!(error.to_string().contains(says), "{file}: {error}");
    }
    let error = SigningKey::from_pem("not a key").unwrap_err();
    assert!(error.to_string().contains("PEM"), "{error}");
    let error = key("rsa-pkcs8.pem", "k")
        .with_algorithm(SigningAlgorithm::ES256)
        .unwrap_err();
    assert!(error.to_string().contains("RS256 or PS256"), "{error}");
    let error = key("ed25519.pem", "k")
        .with_algorithm(SigningAlgorithm::RS256)
        .unwrap_err();
    assert!(error.to_string().contains("EdDSA"), "{error}");
    let error = SigningKey::from_pem_file("/nonexistent/key.pem").unwrap_err();
    assert!(matches!(error, Error::KeyFile { .. }), "{error:?}");
    assert!(SigningKey::from_secret("").is_err());
}

/// PEM files as people have them: OpenSSL's `EC PARAMETERS` before the key, a key +
/// certificate bundle, a legacy encrypted key, an empty file, corrupt DER in a good wrapper.
#[test]
fn keys_as_people_have_them_are_read_or_get_errors_that_say_why() {
    use base64::Engine as _;

    let with_params = SigningKey::from_pem(pem("ec-with-params.pem")).unwrap();
    assert_eq!(with_params.signing_algorithm(), SigningAlgorithm::ES256);
    let bundle = SigningKey::from_pem(pem("rsa-bundle.pem")).unwrap();
    assert_eq!(
        bundle.public_jwk(),
        SigningKey::from_pem(pem("rsa-pkcs8.pem"))
            .unwrap()
            .public_jwk(),
        "the bundle's private key, not its certificate"
    );

    let wrap = |label: &str, der: &[u8]| {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    };
    let two_keys = pem("rsa-pkcs8.pem") + &pem("ec-pkcs8.pem");
    let no_key = pem("rsa-cert.pem") + &pem("rsa-public.pem");
    let cases = [
        (pem("rsa-legacy-encrypted.pem"), "the key is encrypted"),
        (pem("ec-encrypted.pem"), "the key is encrypted"),
        (String::new(), "the PEM is empty"),
        (" \n".to_owned(), "the PEM is empty"),
        (
            no_key,
            "found 2 PEM blocks (CERTIFICATE, PUBLIC KEY), none a private key",
        ),
        (two_keys, "found 2 private keys"),
        (
            wrap("PRIVATE KEY", b"\x30\x03\x02\x01\x05 not DER at all"),
            "the PRIVATE KEY (PKCS#8) is corrupt",
        ),
        (
            wrap("RSA PRIVATE KEY", &[0x30, 0x82, 0x01]),
            "the RSA PRIVATE KEY (PKCS#1) is corrupt",
        ),
        (
            wrap("EC PRIVATE KEY", b"garbage"),
            "the EC PRIVATE KEY (SEC1) is corrupt",
        ),
    ];
    for (text, says) in cases {
        let error = SigningKey::from_pem(&text).unwrap_err();
        assert!(matches!(error, Error::InvalidKey { .. }), "{error:?}");
        assert!(error.to_string().contains(says), "wanted {says:?}: {error}");
        let dpop = token_refresh::dpop::DpopKey::from_pem(&text).unwrap_err();
        assert!(
            dpop.to_string().contains(says),
            "DPoP keys read alike: {dpop}"
        );
    }

    let dir = tempdir();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let error = SigningKey::from_pem_file(&empty).unwrap_err();
    assert!(matches!(error, Error::KeyFile { .. }), "{error:?}");
    assert!(
        error.to_string().contains("the key file is empty"),
        "{error}"
    );
    assert!(
        error.to_string().contains("empty.pem"),
        "names the file: {error}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Microsoft Entra's certificate credentials: the assertion's header names the certificate
/// by its SHA-256 thumbprint (`x5t#S256`), and by SHA-1 (`x5t`) on request. The expected
/// values are OpenSSL's (tests/keys/README.md says how).
#[tokio::test]
async fn a_certificate_puts_its_thumbprints_in_the_header() {
    const X5T_S256: &str = "PJQr7mvWd4ywWCTxeTwfUprfpYi9NWy-K3dGKIdWIog";
    const X5T: &str = "xPNBb8FtL9C6X6nHkNm6I29DMTg";

    let emulator = Emulator::start().await.unwrap();
    let key = SigningKey::from_pem(pem("rsa-bundle.pem"))
        .unwrap()
        .with_key_id("entra")
        .unwrap()
        .with_algorithm(SigningAlgorithm::PS256)
        .unwrap()
        .with_certificate(pem("rsa-bundle.pem"))
        .unwrap();
    assert_eq!(key.x5t_s256(), Some(X5T_S256));
    assert_eq!(key.x5t(), None, "x5t only on request");
    emulator
        .register_key(emulator.client_id(), &key.public_jwk().unwrap())
        .unwrap();
    for (key, x5t) in [
        (key.clone(), None),
        (key.with_sha1_thumbprint(true).unwrap(), Some(X5T)),
    ] {
        let signer = Arc::new(Recording::new(key));
        let provider = TokenProvider::new(ClientCredentials::with_client_auth(
            emulator.token_url(),
            emulator.client_id(),
            ClientAuth::private_key_jwt(ArcSigner(Arc::clone(&signer))),
        ));
        provider.token().await.unwrap();
        let assertion = signer.last.lock().unwrap().clone().unwrap();
        let header = header_of(&assertion);
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["x5t#S256"], X5T_S256, "{header}");
        assert_eq!(header.get("x5t").and_then(|v| v.as_str()), x5t, "{header}");
    }

    let rsa = SigningKey::from_pem(pem("rsa-pkcs8.pem")).unwrap();
    let error = rsa
        .clone()
        .with_certificate(pem("rsa2-cert.pem"))
        .unwrap_err();
    assert!(
        error.to_string().contains("none for this key"),
        "another key's certificate: {error}"
    );
    let error = rsa
        .clone()
        .with_certificate(pem("rsa-public.pem"))
        .unwrap_err();
    assert!(error.to_string().contains("none a CERTIFICATE"), "{error}");
    let error = rsa.with_sha1_thumbprint(true).unwrap_err();
    assert!(error.to_string().contains("with_certificate"), "{error}");
    let error = SigningKey::from_secret("s3cret")
        .unwrap()
        .with_certificate(pem("rsa-cert.pem"))
        .unwrap_err();
    assert!(error.to_string().contains("HMAC"), "{error}");
}

fn header_of(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = jwt.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn private_jwks_are_read_and_public_ones_refused() {
    // RFC 7517 appendix A.2 (EC P-256) and RFC 8037 appendix A.1 (Ed25519).
    let ec = json!({
        "kty": "EC", "crv": "P-256", "kid": "1",
        "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
        "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
        "d": "870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE",
    });
    let key = SigningKey::from_jwk(&ec.to_string()).unwrap();
    assert_eq!(key.signing_algorithm(), SigningAlgorithm::ES256);
    let public = key.public_jwk().unwrap();
    assert_eq!(
        (&public["x"], &public["y"], &public["kid"]),
        (&ec["x"], &ec["y"], &ec["kid"])
    );
    assert!(
        public.get("d").is_none(),
        "the public JWK has no private part"
    );

    let ed = json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
        "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    });
    let key = SigningKey::from_jwk(&ed.to_string()).unwrap();
    assert_eq!(key.public_jwk().unwrap()["x"], ed["x"]);

    let mut public_only = ec.clone();
    public_only.as_object_mut().unwrap().remove("d");
    let error = SigningKey::from_jwk(&public_only.to_string()).unwrap_err();
    assert!(error.to_string().contains("public JWK"), "{error}");
    let mut mismatched = ec.clone();
    mismatched["x"] = ed["x"].clone();
    assert!(SigningKey::from_jwk(&mismatched.to_string()).is_err());
    // An RSA JWK: the same key as its PEM, and its alg taken.
    let rsa = SigningKey::from_jwk(&pem("rsa-private.jwk.json")).unwrap();
    assert_eq!(rsa.signing_algorithm(), SigningAlgorithm::PS256);
    let from_pem = SigningKey::from_pem(pem("rsa-pkcs8.pem"))
        .unwrap()
        .with_key_id("rsa-jwk")
        .unwrap()
        .with_algorithm(SigningAlgorithm::PS256)
        .unwrap();
    assert_eq!(rsa.public_jwk(), from_pem.public_jwk());
    let mut broken: serde_json::Value = serde_json::from_str(&pem("rsa-private.jwk.json")).unwrap();
    broken["q"] = broken["p"].clone();
    assert!(
        SigningKey::from_jwk(&broken.to_string()).is_err(),
        "p = q is no RSA key"
    );

    // An oct JWK is an HMAC secret: HS256, no public part, never shown.
    let oct =
        SigningKey::from_jwk(r#"{"kty":"oct","kid":"h","k":"c2VjcmV0LXZhbHVlLTEyMzQ"}"#).unwrap();
    assert_eq!(oct.signing_algorithm(), SigningAlgorithm::HS256);
    assert!(oct.public_jwk().is_none());
    assert!(!format!("{oct:?}").contains("c2VjcmV0"));

    let error = SigningKey::from_jwk(r#"{"kty":"EC","crv":"P-384","d":"AA"}"#).unwrap_err();
    assert!(error.to_string().contains("P-384"), "{error}");
}

#[test]
fn keys_never_show_their_material() {
    for (key, _) in keys() {
        let debug = format!("{key:?}");
        assert!(debug.contains("[REDACTED]"), "{debug}");
        for name in [
            "rsa-pkcs8.pem",
            "rsa-pkcs1.pem",
            "ec-pkcs8.pem",
            "ec-sec1.pem",
            "ed25519.pem",
        ] {
            let body = pem(name);
            let line = body.lines().nth(1).unwrap();
            assert!(!debug.contains(&line[..16]), "{debug}");
        }
        let source = JwtBearer::signed_by("https://auth.example.com/token", ISSUER, key);
        assert!(!format!("{source:?}").contains("PRIVATE"));
    }
    let secret = SigningKey::from_secret("hmac-secret-value").unwrap();
    assert!(!format!("{secret:?}").contains("hmac-secret-value"));
    assert!(secret.public_jwk().is_none());
}

/// Our assertions as jsonwebtoken, a JOSE library the crate does not use, sees them: the
/// signature verifies with the public key, and the claims are what the grant promises.
#[tokio::test]
async fn jsonwebtoken_verifies_our_assertions() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    common::jsonwebtoken();
    let emulator = Emulator::start().await.unwrap();
    let cases = [
        (
            key("rsa-pkcs8.pem", "rs"),
            Algorithm::RS256,
            DecodingKey::from_rsa_pem(pem("rsa-public.pem").as_bytes()).unwrap(),
        ),
        (
            key("rsa-pkcs1.pem", "ps")
                .with_algorithm(SigningAlgorithm::PS256)
                .unwrap(),
            Algorithm::PS256,
            DecodingKey::from_rsa_pem(pem("rsa-public.pem").as_bytes()).unwrap(),
        ),
        (
            key("ec-sec1.pem", "es"),
            Algorithm::ES256,
            DecodingKey::from_ec_pem(pem("ec-public.pem").as_bytes()).unwrap(),
        ),
        (
            key("ed25519.pem", "ed"),
            Algorithm::EdDSA,
            DecodingKey::from_ed_pem(pem("ed25519-public.pem").as_bytes()).unwrap(),
        ),
    ];
    for (key, jwa, public) in cases {
        let algorithm = key.signing_algorithm();
        emulator
            .register_key(ISSUER, &key.public_jwk().unwrap())
            .unwrap();
        let signer = Arc::new(Recording::new(key));
        let provider = TokenProvider::new(
            JwtBearer::signed_by(emulator.token_url(), ISSUER, ArcSigner(Arc::clone(&signer)))
                .subject("subject-1"),
        );
        provider.token().await.unwrap();
        let assertion = signer.last.lock().unwrap().clone().unwrap();
        let mut validation = Validation::new(jwa);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[emulator.token_url()]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub", "jti"]);
        let verify = |token: &str| {
            jsonwebtoken::decode::<serde_json::Value>(token, &public, &validation)
                .map(|data| data.claims)
        };
        let claims = verify(&assertion).unwrap_or_else(|e| panic!("{algorithm}: {e}"));
        assert_eq!(claims["sub"], "subject-1");
        assert_eq!(claims["jti"].as_str().map(str::len), Some(32));
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(lifetime <= 300, "a short-lived assertion: {lifetime} s");

        // A tampered signature does not verify: the check is real.
        let mut tampered = assertion.clone().into_bytes();
        let middle = tampered.len() - 10; // inside the signature, away from its padding bits
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(
            verify(&tampered).is_err(),
            "{algorithm}: tampered token verified"
        );
    }
}

#[tokio::test]
async fn a_client_assertion_is_not_signed_for_a_request_that_cannot_go() {
    let calls = Arc::new(AtomicUsize::new(0));
    let signer = Broken {
        hang: false,
        calls: Arc::clone(&calls),
    };
    let source = ClientCredentials::with_client_auth(
        "http://auth.example.com/oauth2/token",
        "client",
        ClientAuth::private_key_jwt(signer),
    );
    let error = TokenProvider::new(source).token().await.unwrap_err();
    assert!(
        matches!(error.last_attempt(), Error::InsecureTransport { .. }),
        "{error:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the KMS was asked for nothing"
    );
}
