//! DPoP proofs checked from outside: jsonwebtoken (a JOSE library the crate does not use)
//! verifies their signatures with the public key taken from the proof's own header and
//! computes its RFC 7638 thumbprint, which is also recomputed by hand; keys load from PEM.

mod common;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::Digest as _;
use token_refresh::dpop::DpopKey;
use token_refresh::{Error, SigningAlgorithm};

fn pem(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Proof {
    htm: String,
    htu: String,
    jti: String,
    ath: Option<String>,
}

/// Verifies `proof` with jsonwebtoken and the key in the proof's own header, as a server
/// does; returns its claims and jsonwebtoken's RFC 7638 thumbprint of that key.
fn verify(proof: &str) -> (Proof, String) {
    use jsonwebtoken::jwk::ThumbprintHash;
    use jsonwebtoken::{DecodingKey, Validation};

    common::jsonwebtoken();
    let header = jsonwebtoken::decode_header(proof).unwrap();
    assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
    let jwk = header.jwk.expect("the proof carries its public key");
    let thumbprint = jwk.thumbprint(ThumbprintHash::SHA256).unwrap_or_else(|_| {
        // jsonwebtoken computes no thumbprint for OKP keys: by hand, then.
        thumbprint_by_hand(&serde_json::to_value(&jwk).unwrap())
    });
    let key = DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Proof>(proof, &key, &validation)
        .unwrap_or_else(|e| panic!("{:?}: {e}", header.alg))
        .claims;
    (claims, thumbprint)
}

/// RFC 7638 by hand: the required members, sorted, no whitespace, hashed.
fn thumbprint_by_hand(jwk: &Value) -> String {
    let s = |name: &str| jwk[name].as_str().unwrap().to_owned();
    let canonical = match jwk["kty"].as_str().unwrap() {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        ),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv"), s("x")),
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
        other => panic!("kty {other}"),
    };
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

#[test]
fn jsonwebtoken_verifies_our_proofs_and_their_thumbprints() {
    let keys = [
        DpopKey::generate(),
        DpopKey::generate_ed25519(),
        DpopKey::from_pem(pem("ec-pkcs8.pem")).unwrap(),
        DpopKey::from_pem(pem("ed25519.pem")).unwrap(),
        DpopKey::from_pem(pem("rsa-pkcs8.pem")).unwrap(),
        DpopKey::from_pem(pem("rsa-pkcs8.pem"))
            .unwrap()
            .with_algorithm(SigningAlgorithm::PS256)
            .unwrap(),
    ];
    for key in &keys {
        let proof = key
            .proof(
                "POST",
                "https://rs.example.com/v2/echo?q=1",
                Some("the-access-token"),
                None,
            )
            .unwrap();
        let (claims, thumbprint) = verify(&proof);
        assert_eq!(claims.htm, "POST");
        assert_eq!(claims.htu, "https://rs.example.com/v2/echo");
        assert_eq!(claims.jti.len(), 32);
        assert_eq!(
            claims.ath.as_deref(),
            Some(
                URL_SAFE_NO_PAD
                    .encode(sha2::Sha256::digest(b"the-access-token"))
                    .as_str()
            )
        );
        let header = decode(proof.split('.').next().unwrap());
        assert_eq!(thumbprint, key.thumbprint(), "{:?}", key.algorithm());
        assert_eq!(thumbprint_by_hand(&header["jwk"]), key.thumbprint());
    }
}

#[test]
fn a_proof_altered_by_one_claim_does_not_verify() {
    let key = DpopKey::generate();
    let proof = key
        .proof("GET", "https://rs.example.com/", None, None)
        .unwrap();
    let parts: Vec<&str> = proof.split('.').collect();
    let mut claims = decode(parts[1]);
    claims["htu"] = "https://evil.example.com/".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let verified = std::panic::catch_unwind(|| verify(&forged));
    assert!(verified.is_err(), "a forged proof verified");
    verify(&proof);
}

#[test]
fn keys_load_from_pem_and_refuse_what_cannot_sign_proofs() {
    assert_eq!(
        DpopKey::from_pem(pem("ec-sec1.pem")).unwrap().algorithm(),
        SigningAlgorithm::ES256
    );
    assert_eq!(
        DpopKey::from_pem(pem("ed25519.pem")).unwrap().algorithm(),
        SigningAlgorithm::EdDSA
    );
    assert_eq!(
        DpopKey::from_pem(pem("rsa-pkcs1.pem")).unwrap().algorithm(),
        SigningAlgorithm::RS256
    );
    for bad in ["ec-p384.pem", "ec-public.pem", "ec-encrypted.pem"] {
        assert!(
            matches!(DpopKey::from_pem(pem(bad)), Err(Error::InvalidKey { .. })),
            "{bad}"
        );
    }
    let key = DpopKey::from_pem(pem("ec-pkcs8.pem")).unwrap();
    let text = format!("{key:?}");
    let secret = pem("ec-pkcs8.pem");
    let body = secret.lines().nth(1).unwrap();
    assert!(!text.contains(body), "{text}");
}
mod against_the_emulator {
    use super::*;
    use token_refresh::store::FileStore;
    use token_refresh::{ClientCredentials, TokenProvider, TokenSource};
    use token_refresh_emulator::Emulator;

    fn source(emulator: &Emulator, key: &DpopKey) -> ClientCredentials {
        emulator.client_credentials().dpop(key.clone())
    }

    /// POSTs a client-credentials form with `proof` as its DPoP header.
    async fn post_with_proof(emulator: &Emulator, proof: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(emulator.token_url())
            .basic_auth(emulator.client_id(), Some(emulator.client_secret()))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("dpop", proof)
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_dpop_token_request_gets_a_token_bound_to_the_key() {
        let emulator = Emulator::start().await.unwrap();
        let key = DpopKey::generate();
        let token = TokenProvider::new(source(&emulator, &key))
            .token()
            .await
            .unwrap();
        assert_eq!(
            token.dpop_key().map(DpopKey::thumbprint),
            Some(key.thumbprint())
        );
        assert!(token.header_value().to_str().unwrap().starts_with("DPoP "));
        assert_eq!(token.token_type(), "DPoP");
        assert_eq!(emulator.stats().dpop_tokens, 1);
        // Sent as a bearer token, a bound token is refused (RFC 9449 §7.1).
        let status = reqwest::Client::new()
            .get(format!("{}/projects", emulator.api_url()))
            .bearer_auth(token.expose_secret())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }

    #[tokio::test]
    async fn the_nonce_dance_costs_one_extra_request_and_no_failed_attempt() {
        let emulator = Emulator::start().await.unwrap();
        emulator.require_dpop_nonce(true);
        let key = DpopKey::generate_ed25519();
        let provider = TokenProvider::new(source(&emulator, &key));
        let token = provider.token().await.unwrap();
        let stats = emulator.stats();
        assert_eq!((stats.token_requests, stats.dpop_refusals), (2, 1));
        assert_eq!(provider.health().consecutive_failures, 0);
        // The nonce is kept: the next refresh needs no dance.
        provider.invalidate(&token);
        let token = provider.token().await.unwrap();
        assert_eq!(emulator.stats().token_requests, 3);
        // Rotated mid-run: one more 400, answered once with the new nonce.
        emulator.rotate_dpop_nonce();
        provider.invalidate(&token);
        provider.token().await.unwrap();
        let stats = emulator.stats();
        assert_eq!((stats.token_requests, stats.dpop_refusals), (5, 2));
        assert_eq!(stats.dpop_tokens, 3);
    }

    /// The nonce retry signs its assertions again: a server that checks `jti` against replays
    /// (and does so before it looks at the DPoP proof, as the emulator does) would refuse
    /// the first request's assertion sent a second time.
    #[tokio::test]
    async fn the_nonce_retry_signs_new_assertions_for_servers_that_check_jti() {
        use token_refresh::{ClientAuth, JwtBearer, SigningKey};
        const ISSUER: &str = "robot@example.com";
        let emulator = Emulator::start().await.unwrap();
        emulator.check_replays(true);
        emulator.require_dpop_nonce(true);
        let grant_key = SigningKey::from_pem(pem("ed25519.pem"))
            .unwrap()
            .with_key_id("grant")
            .unwrap();
        emulator
            .register_key(ISSUER, &grant_key.public_jwk().unwrap())
            .unwrap();
        let client_key = SigningKey::from_pem(pem("ec-pkcs8.pem"))
            .unwrap()
            .with_key_id("client")
            .unwrap();
        emulator
            .register_key(emulator.client_id(), &client_key.public_jwk().unwrap())
            .unwrap();

        let jwt_bearer = JwtBearer::signed_by(emulator.token_url(), ISSUER, grant_key)
            .dpop(DpopKey::generate_ed25519());
        TokenProvider::new(jwt_bearer).token().await.unwrap();
        let private_key_jwt = ClientCredentials::with_client_auth(
            emulator.token_url(),
            emulator.client_id(),
            ClientAuth::private_key_jwt(client_key),
        )
        .dpop(DpopKey::generate_ed25519());
        TokenProvider::new(private_key_jwt).token().await.unwrap();

        let stats = emulator.stats();
        // Each source: a 400 use_dpop_nonce, then a token; no assertion refused as replayed.
        assert_eq!(stats.dpop_refusals, 2);
        assert_eq!(stats.dpop_tokens, 2);
        assert_eq!(
            stats.token_failures, 2,
            "only the two nonce refusals failed"
        );
    }

    #[tokio::test]
    async fn a_server_that_keeps_refusing_the_nonce_gets_one_retry_only() {
        let server = httpmock::MockServer::start_async().await;
        let refusals = server
            .mock_async(|when, then| {
                when.method("POST").path("/token").header_exists("dpop");
                then.status(400)
                    .header("dpop-nonce", "always-another")
                    .json_body(serde_json::json!({"error": "use_dpop_nonce"}));
            })
            .await;
        let endpoint =
            token_refresh::TokenEndpoint::new(server.url("/token")).dpop(DpopKey::generate());
        let error = ClientCredentials::new(endpoint, "id", "secret")
            .fetch_token()
            .await
            .unwrap_err();
        assert_eq!(error.oauth_error(), Some("use_dpop_nonce"));
        assert_eq!(
            refusals.calls_async().await,
            2,
            "the first send and one retry"
        );
    }

    #[tokio::test]
    async fn a_replayed_proof_and_a_proof_for_another_url_are_refused() {
        let emulator = Emulator::start().await.unwrap();
        let key = DpopKey::generate();
        let proof = key
            .proof("POST", &emulator.token_url(), None, None)
            .unwrap();
        assert_eq!(post_with_proof(&emulator, &proof).await.0, 200);
        let (status, body) = post_with_proof(&emulator, &proof).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_dpop_proof"))
        );
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("replay")
        );
        let elsewhere = key
            .proof("POST", "https://other.example.com/oauth2/token", None, None)
            .unwrap();
        let (status, body) = post_with_proof(&emulator, &elsewhere).await;
        assert_eq!(status, 400);
        assert!(
            body["error_description"].as_str().unwrap().contains("htu"),
            "{body}"
        );
        let wrong_method = key.proof("GET", &emulator.token_url(), None, None).unwrap();
        let (status, body) = post_with_proof(&emulator, &wrong_method).await;
        assert_eq!(status, 400);
        assert!(
            body["error_description"].as_str().unwrap().contains("htm"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_bearer_answer_to_a_dpop_request_is_refused_unless_allowed() {
        let server = httpmock::MockServer::start_async().await;
        server
            .mock_async(|when, then| {
                when.method("POST").path("/token").header_exists("dpop");
                then.status(200).json_body(serde_json::json!({
                    "access_token": "plain-bearer", "token_type": "Bearer", "expires_in": 60
                }));
            })
            .await;
        let key = DpopKey::generate();
        let endpoint = token_refresh::TokenEndpoint::new(server.url("/token")).dpop(key.clone());
        let strict = ClientCredentials::new(endpoint.clone(), "id", "secret");
        assert!(matches!(
            strict.fetch_token().await,
            Err(Error::DpopNotBound)
        ));
        let lenient = ClientCredentials::new(endpoint.dpop_allow_bearer(true), "id", "secret");
        let token = lenient.fetch_token().await.unwrap();
        assert!(token.dpop_key().is_none());
        assert_eq!(token.token_type(), "Bearer");
        // The order of the two settings does not matter.
        let allowed_first = token_refresh::TokenEndpoint::new(server.url("/token"))
            .dpop_allow_bearer(true)
            .dpop(key.clone());
        ClientCredentials::new(allowed_first, "id", "secret")
            .fetch_token()
            .await
            .unwrap();
        assert!(
            token
                .header_value()
                .to_str()
                .unwrap()
                .starts_with("Bearer ")
        );
    }

    /// A token endpoint that echoes the DPoP header in its error: the proof, a credential
    /// for a minute, appears nowhere in the error.
    #[tokio::test]
    async fn a_proof_echoed_by_the_token_endpoint_is_scrubbed_from_the_error() {
        use token_refresh_emulator::{Answer, ScriptedServer};

        let server = ScriptedServer::start(|request| {
            let proof = request.header("dpop").unwrap_or_default();
            Answer::json(
                400,
                serde_json::json!({
                    "error": "invalid_dpop_proof",
                    "error_description": format!("the proof {proof} does not verify"),
                }),
            )
        })
        .await
        .unwrap();
        let source =
            ClientCredentials::new(server.url("/token"), "id", "secret").dpop(DpopKey::generate());
        let error = TokenProvider::new(source).token().await.unwrap_err();
        let proof = server.received()[0].header("dpop").unwrap().to_owned();
        let text = format!("{error} {error:?}");
        assert!(text.contains("does not verify"), "{text}");
        for part in proof.split('.') {
            assert!(!text.contains(part), "the proof shows: {text}");
        }
    }

    #[tokio::test]
    async fn a_refresh_token_grant_asks_for_dpop_bound_tokens() {
        let emulator = Emulator::start().await.unwrap();
        let key = DpopKey::generate();
        let source = token_refresh::RefreshToken::new(
            emulator.token_url(),
            token_refresh::OAuthClient::new(emulator.client_id(), emulator.client_secret()),
            emulator.issue_refresh_token(),
        )
        .dpop(key.clone());
        let token = TokenProvider::new(source).token().await.unwrap();
        assert_eq!(token.token_type(), "DPoP");
        assert_eq!(
            token.dpop_key().map(DpopKey::thumbprint),
            Some(key.thumbprint())
        );
    }

    #[tokio::test]
    async fn a_store_shares_dpop_tokens_only_with_the_same_key() {
        let emulator = Emulator::start().await.unwrap();
        let dir = std::env::temp_dir().join(format!(
            "token-refresh-dpop-store-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let key = DpopKey::generate();
        let provider = |key: &DpopKey| {
            TokenProvider::builder(source(&emulator, key))
                .store(FileStore::new(&dir).encryption_key([5; 32]))
                .try_build()
                .unwrap()
        };
        let first = provider(&key).token().await.unwrap();
        let again = provider(&key).token().await.unwrap();
        assert_eq!(first.expose_secret(), again.expose_secret());
        assert_eq!(
            again.dpop_key().map(DpopKey::thumbprint),
            Some(key.thumbprint())
        );
        assert_eq!(emulator.stats().token_requests, 1);
        let other = DpopKey::generate();
        let theirs = provider(&other).token().await.unwrap();
        assert_ne!(theirs.expose_secret(), first.expose_secret());
        assert_eq!(emulator.stats().token_requests, 2);
        std::fs::remove_dir_all(&dir).ok();
    }
}
