//! Signing keys: every algorithm for the JWT-bearer grant and for client assertions against
//! the emulator's registered keys, algorithm confusion and replays refused, key files
//! rotated on disk, signers that count, hang or fail, and our assertions verified by a JOSE
//! library the crate does not use (jwt-simple).

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
    SigningKey::from_pem(pem(name)).unwrap().key_id(kid)
}

/// Every algorithm, from every PEM form.
fn keys() -> Vec<(SigningKey, SigningAlgorithm)> {
    vec![
        (key("rsa-pkcs8.pem", "rs256"), SigningAlgorithm::RS256),
        (key("rsa-pkcs1.pem", "rs256-pkcs1"), SigningAlgorithm::RS256),
        (
            key("rsa-pkcs8.pem", "ps256")
                .algorithm(SigningAlgorithm::PS256)
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
        .key_id("rsa-key");
    assert_eq!(forged.signing_algorithm(), SigningAlgorithm::HS256);
    let error = TokenProvider::new(JwtBearer::signed_by(emulator.token_url(), ISSUER, forged))
        .token()
        .await
        .unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_grant"), "{error}");
    assert!(error.to_string().contains("HS256"), "{error}");

    let forged = SigningKey::from_secret(public_pem.as_bytes())
        .unwrap()
        .key_id("client-rsa");
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

#[async_trait::async_trait]
impl Signer for Recording {
    fn algorithm(&self) -> SigningAlgorithm {
        self.key.signing_algorithm()
    }
    fn key_id(&self) -> Option<&str> {
        Signer::key_id(&self.key)
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

#[async_trait::async_trait]
impl<S: Signer> Signer for ArcSigner<S> {
    fn algorithm(&self) -> SigningAlgorithm {
        self.0.algorithm()
    }
    fn key_id(&self) -> Option<&str> {
        self.0.key_id()
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

#[async_trait::async_trait]
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
    let key = SigningKey::from_pem_file(&path).unwrap().key_id("rotating");
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
        .key_id("rotating");
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
        ("ec-p384.pem", "unsupported type"),
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
        .algorithm(SigningAlgorithm::ES256)
        .unwrap_err();
    assert!(error.to_string().contains("RS256 or PS256"), "{error}");
    let error = key("ed25519.pem", "k")
        .algorithm(SigningAlgorithm::RS256)
        .unwrap_err();
    assert!(error.to_string().contains("EdDSA"), "{error}");
    let error = SigningKey::from_pem_file("/nonexistent/key.pem").unwrap_err();
    assert!(matches!(error, Error::KeyFile { .. }), "{error:?}");
    assert!(SigningKey::from_secret("").is_err());
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
        .key_id("rsa-jwk")
        .algorithm(SigningAlgorithm::PS256)
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

/// Our assertions as jwt-simple, a JOSE library the crate does not use, sees them: the
/// signature verifies with the public key, and the claims are what the grant promises.
#[tokio::test]
async fn jwt_simple_verifies_our_assertions() {
    use jwt_simple::prelude::*;

    let emulator = Emulator::start().await.unwrap();
    type Verify = Box<dyn Fn(&str) -> Result<JWTClaims<NoCustomClaims>, jwt_simple::Error>>;
    let cases: Vec<(SigningKey, Verify)> = vec![
        (key("rsa-pkcs8.pem", "rs"), {
            let public = RS256PublicKey::from_pem(&pem("rsa-public.pem")).unwrap();
            Box::new(move |t| public.verify_token::<NoCustomClaims>(t, None))
        }),
        (
            key("rsa-pkcs1.pem", "ps")
                .algorithm(SigningAlgorithm::PS256)
                .unwrap(),
            {
                let public = PS256PublicKey::from_pem(&pem("rsa-public.pem")).unwrap();
                Box::new(move |t| public.verify_token::<NoCustomClaims>(t, None))
            },
        ),
        (key("ec-sec1.pem", "es"), {
            let public = ES256PublicKey::from_pem(&pem("ec-public.pem")).unwrap();
            Box::new(move |t| public.verify_token::<NoCustomClaims>(t, None))
        }),
        (key("ed25519.pem", "ed"), {
            let public = Ed25519PublicKey::from_pem(&pem("ed25519-public.pem")).unwrap();
            Box::new(move |t| public.verify_token::<NoCustomClaims>(t, None))
        }),
    ];
    for (key, verify) in cases {
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
        let claims = verify(&assertion).unwrap_or_else(|e| panic!("{algorithm}: {e}"));
        assert_eq!(claims.issuer.as_deref(), Some(ISSUER));
        assert_eq!(claims.subject.as_deref(), Some("subject-1"));
        assert!(claims.jwt_id.is_some());
        let audiences = claims.audiences.unwrap().into_set();
        assert!(audiences.contains(&emulator.token_url()), "{audiences:?}");
        let lifetime = claims.expires_at.unwrap().as_secs() - claims.issued_at.unwrap().as_secs();
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
