//! DPoP proofs checked from outside: jwt-compact (a JOSE library the crate does not use)
//! verifies their signatures with the public key taken from the proof's own header and
//! computes its RFC 7638 thumbprint, which is also recomputed by hand; keys load from PEM.

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

/// Verifies `proof` with jwt-compact and the key in the proof's own header, as a server
/// does; returns its claims and jwt-compact's RFC 7638 thumbprint of that key.
fn verify(proof: &str) -> (Proof, String) {
    use jwt_compact::alg::{Ed25519, Es256, Rsa, RsaPublicKey};
    use jwt_compact::jwk::JsonWebKey;
    use jwt_compact::{Algorithm, AlgorithmExt as _, UntrustedToken};

    let header = decode(proof.split('.').next().unwrap());
    assert_eq!(header["typ"], "dpop+jwt");
    let jwk: JsonWebKey<'_> = serde_json::from_value(header["jwk"].clone()).unwrap();
    let thumbprint = URL_SAFE_NO_PAD.encode(jwk.thumbprint::<sha2::Sha256>());
    let token = UntrustedToken::new(proof).unwrap();
    let claims = match header["alg"].as_str().unwrap() {
        "ES256" => {
            let key = <Es256 as Algorithm>::VerifyingKey::try_from(&jwk).unwrap();
            Es256.validator::<Proof>(&key).validate(&token).unwrap()
        }
        "EdDSA" => {
            let key = <Ed25519 as Algorithm>::VerifyingKey::try_from(&jwk).unwrap();
            Ed25519.validator::<Proof>(&key).validate(&token).unwrap()
        }
        "RS256" => {
            let key = RsaPublicKey::try_from(&jwk).unwrap();
            Rsa::rs256()
                .validator::<Proof>(&key)
                .validate(&token)
                .unwrap()
        }
        other => panic!("unexpected alg {other}"),
    };
    (claims.claims().custom.clone(), thumbprint)
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
fn jwt_compact_verifies_our_proofs_and_their_thumbprints() {
    let keys = [
        DpopKey::generate(),
        DpopKey::generate_ed25519(),
        DpopKey::from_pem(pem("ec-pkcs8.pem")).unwrap(),
        DpopKey::from_pem(pem("ed25519.pem")).unwrap(),
        DpopKey::from_pem(pem("rsa-pkcs8.pem")).unwrap(),
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
