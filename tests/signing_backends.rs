//! One key, same bytes: aws-lc-rs and the RustCrypto crates sign alike. RS256 and EdDSA are
//! deterministic, so their signatures are byte-identical across the backends; ES256 and
//! PS256 are randomized, so each backend's signatures verify with the other's verifier.
//! Keys load alike on both, from every PEM form and from JWK.
#![cfg(feature = "aws-lc")]

use std::path::Path;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use token_refresh::dpop::DpopKey;
use token_refresh::signing::Backend;
use token_refresh::{Signer, SigningAlgorithm, SigningKey};

const MESSAGE: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJyb2JvdCJ9";

fn pem(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn on(backend: Backend, name: &str, algorithm: SigningAlgorithm) -> SigningKey {
    SigningKey::from_pem_on(pem(name), backend)
        .unwrap()
        .with_algorithm(algorithm)
        .unwrap()
}

async fn sign(key: &SigningKey) -> Vec<u8> {
    key.sign(MESSAGE).await.unwrap()
}

fn jwk_bytes(key: &SigningKey, member: &str) -> Vec<u8> {
    let jwk = key.public_jwk().unwrap();
    URL_SAFE_NO_PAD
        .decode(jwk[member].as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn rs256_and_eddsa_signatures_are_byte_identical_across_backends() {
    for (name, algorithm) in [
        ("rsa-pkcs8.pem", SigningAlgorithm::RS256),
        ("rsa-pkcs1.pem", SigningAlgorithm::RS256),
        ("rsa-bundle.pem", SigningAlgorithm::RS256),
        ("ed25519.pem", SigningAlgorithm::EdDSA),
    ] {
        let aws_lc = on(Backend::AwsLc, name, algorithm);
        let rust_crypto = on(Backend::RustCrypto, name, algorithm);
        assert_eq!(aws_lc.public_jwk(), rust_crypto.public_jwk(), "{name}");
        let signature = sign(&aws_lc).await;
        assert_eq!(signature, sign(&rust_crypto).await, "{name} {algorithm}");
        assert_eq!(signature, sign(&aws_lc).await, "deterministic");
        // Not a constant: another message signs otherwise.
        assert_ne!(signature, aws_lc.sign(b"another message").await.unwrap());
    }
}

#[tokio::test]
async fn es256_and_ps256_signatures_verify_with_the_other_backend() {
    use p256::ecdsa::signature::Verifier as _;

    for name in ["ec-pkcs8.pem", "ec-sec1.pem", "ec-with-params.pem"] {
        let aws_lc = on(Backend::AwsLc, name, SigningAlgorithm::ES256);
        let rust_crypto = on(Backend::RustCrypto, name, SigningAlgorithm::ES256);
        assert_eq!(aws_lc.public_jwk(), rust_crypto.public_jwk(), "{name}");
        let mut point = vec![4];
        point.extend(jwk_bytes(&aws_lc, "x"));
        point.extend(jwk_bytes(&aws_lc, "y"));

        // aws-lc's signature, verified by RustCrypto's p256.
        let verifier = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
        let signature = p256::ecdsa::Signature::from_slice(&sign(&aws_lc).await).unwrap();
        verifier.verify(MESSAGE, &signature).unwrap();
        assert!(verifier.verify(b"tampered", &signature).is_err());
        // RustCrypto's, verified by aws-lc.
        let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point);
        verifier.verify(MESSAGE, &sign(&rust_crypto).await).unwrap();
        assert!(
            verifier
                .verify(b"tampered", &sign(&rust_crypto).await)
                .is_err()
        );
    }

    for name in ["rsa-pkcs8.pem", "rsa-pkcs1.pem"] {
        let aws_lc = on(Backend::AwsLc, name, SigningAlgorithm::PS256);
        let rust_crypto = on(Backend::RustCrypto, name, SigningAlgorithm::PS256);
        let n = rsa::BoxedUint::from_be_slice_vartime(&jwk_bytes(&aws_lc, "n"));
        let e = rsa::BoxedUint::from_be_slice_vartime(&jwk_bytes(&aws_lc, "e"));
        let public = rsa::PublicKey::new(n, e).unwrap();

        // aws-lc's PSS signature, verified by RustCrypto's rsa.
        let verifier = rsa::pss::VerifyingKey::<sha2::Sha256>::new(public.clone());
        let signature = rsa::pss::Signature::try_from(sign(&aws_lc).await.as_slice()).unwrap();
        rsa::signature::Verifier::verify(&verifier, MESSAGE, &signature).unwrap();
        assert!(rsa::signature::Verifier::verify(&verifier, b"tampered", &signature).is_err());
        // RustCrypto's, verified by aws-lc (RSAPublicKey DER: aws-lc's own encoding of n, e).
        let der = rsa::pkcs1::EncodeRsaPublicKey::to_pkcs1_der(&public).unwrap();
        let verifier = UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, der.as_bytes());
        verifier.verify(MESSAGE, &sign(&rust_crypto).await).unwrap();
        assert!(
            verifier
                .verify(b"tampered", &sign(&rust_crypto).await)
                .is_err()
        );
    }
}

#[tokio::test]
async fn dpop_keys_load_alike_on_both_backends() {
    for name in ["ec-pkcs8.pem", "ed25519.pem", "rsa-pkcs8.pem"] {
        let aws_lc = DpopKey::from_pem_on(pem(name), Backend::AwsLc).unwrap();
        let rust_crypto = DpopKey::from_pem_on(pem(name), Backend::RustCrypto).unwrap();
        assert_eq!(aws_lc.thumbprint(), rust_crypto.thumbprint(), "{name}");
        assert_eq!(aws_lc.algorithm(), rust_crypto.algorithm(), "{name}");
    }
    for eddsa in [false, true] {
        let key = DpopKey::generate_on(Backend::RustCrypto, eddsa).unwrap();
        assert_eq!(
            key.algorithm(),
            if eddsa {
                SigningAlgorithm::EdDSA
            } else {
                SigningAlgorithm::ES256
            }
        );
        assert_ne!(
            key.thumbprint(),
            DpopKey::generate_on(Backend::RustCrypto, eddsa)
                .unwrap()
                .thumbprint(),
            "fresh keys"
        );
    }
}
