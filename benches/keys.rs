//! Keys: what a signature costs per algorithm on each signing backend, and what a DPoP proof
//! costs per request, side by side in one run.
//!
//! - `signature` (criterion): `SigningKey::sign` for RS256, PS256, ES256, EdDSA and HS256,
//!   with the key parsed once, on aws-lc-rs (`aws_lc_*`, feature `aws-lc`, on by default)
//!   and on the RustCrypto crates (`rust_crypto_*`: rsa 0.10, p256 0.14 with precomputed
//!   tables, ed25519-dalek; HS256 is RustCrypto's `hmac` on both).
//! - `dpop` (criterion): a whole DPoP proof (claims, `jti`, `ath`, nonce, base64, one
//!   signature) with the default backend's ES256 and EdDSA keys, beside what a bearer
//!   request attaches (a header value clone).
//!
//! Goals: aws-lc RS256 ≤ 0.3× RustCrypto's; an ES256 DPoP proof ≤ 0.4× the p256-tables
//! signature; an EdDSA proof ≤ 1.2× the bare EdDSA signature of the same backend.
//!
//! ```text
//! cargo bench --bench keys
//! ```

mod common;

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use common::{Bench, fmt_ns, verdict};
use token_refresh::dpop::DpopKey;
use token_refresh::signing::Backend;
use token_refresh::{AccessToken, Signer, SigningAlgorithm, SigningKey};

const SIGNATURE: &str = "signature";
const DPOP: &str = "dpop";
/// A JWT signing input of the size our assertions have.
const MESSAGE: &[u8] = b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIiwidHlwIjoiSldUIn0.eyJpc3MiOiJyb2JvdEBleGFtcGxlLmNvbSIsImF1ZCI6Imh0dHBzOi8vb2F1dGgyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDAxODAsImp0aSI6IjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmIn0";
const URI: &str = "https://api.example.com/v2/projects/my-project/devices?page_size=100";
const TOKEN: &str =
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJib3QiLCJjbmYiOnsiamt0IjoiYWJjIn19.c2lnbmF0dXJl";
const NONCE: &str = "server-nonce-0123456789";
const ALGORITHMS: [SigningAlgorithm; 5] = [
    SigningAlgorithm::RS256,
    SigningAlgorithm::PS256,
    SigningAlgorithm::ES256,
    SigningAlgorithm::EdDSA,
    SigningAlgorithm::HS256,
];

fn pem(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name),
    )
    .expect("the test keys are in tests/keys")
}

/// The backends this build has, named as in the benchmark ids.
fn backends() -> Vec<(&'static str, Backend)> {
    vec![
        #[cfg(feature = "aws-lc")]
        ("aws_lc", Backend::AwsLc),
        ("rust_crypto", Backend::RustCrypto),
    ]
}

fn key(algorithm: SigningAlgorithm, backend: Backend) -> SigningKey {
    let load = |name: &str| SigningKey::from_pem_on(pem(name), backend).expect("a test key");
    match algorithm {
        SigningAlgorithm::RS256 => load("rsa-pkcs8.pem"),
        SigningAlgorithm::PS256 => load("rsa-pkcs8.pem")
            .with_algorithm(SigningAlgorithm::PS256)
            .expect("RSA signs PS256"),
        SigningAlgorithm::ES256 => load("ec-pkcs8.pem"),
        SigningAlgorithm::EdDSA => load("ed25519.pem"),
        _ => SigningKey::from_secret(b"0123456789abcdef0123456789abcdef").expect("a secret"),
    }
}

fn main() {
    let mut bench = Bench::start();
    let rt = common::current_thread_runtime();
    {
        let mut group = bench.criterion.benchmark_group(SIGNATURE);
        for (name, backend) in backends() {
            for algorithm in ALGORITHMS {
                let key = key(algorithm, backend);
                group.bench_function(format!("{name}_{algorithm}"), |b| {
                    b.iter(|| rt.block_on(key.sign(black_box(MESSAGE))).expect("signs"))
                });
            }
        }
        group.finish();
    }
    {
        let mut group = bench.criterion.benchmark_group(DPOP);
        let bearer = AccessToken::new(TOKEN, Duration::from_secs(3600)).expect("a token");
        group.bench_function("bearer_header", |b| {
            b.iter(|| black_box(&bearer).header_value())
        });
        // The bare signatures, straight from the crates, on a message as long as a proof's
        // signing input: P-256 with precomputed tables (RustCrypto's fastest), and Ed25519 on
        // the default backend.
        let message = {
            let proof = DpopKey::generate()
                .proof("GET", URI, Some(TOKEN), Some(NONCE))
                .expect("a proof");
            proof.as_bytes()[..proof.rfind('.').expect("three parts")].to_vec()
        };
        let p256_key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).expect("a P-256 scalar");
        group.bench_function("bare_ES256_p256_tables", |b| {
            b.iter(|| {
                use p256::ecdsa::signature::Signer as _;
                let signature: p256::ecdsa::Signature = p256_key.sign(black_box(&message));
                signature
            })
        });
        #[cfg(feature = "aws-lc")]
        {
            let ed_key = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&[7; 32])
                .expect("an Ed25519 seed");
            group.bench_function("bare_EdDSA", |b| {
                b.iter(|| ed_key.sign(black_box(&message)))
            });
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            let ed_key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
            group.bench_function("bare_EdDSA", |b| {
                b.iter(|| ed25519_dalek::Signer::sign(&ed_key, black_box(&message)))
            });
        }
        for (algorithm, key) in [
            ("ES256", DpopKey::generate()),
            ("EdDSA", DpopKey::generate_ed25519()),
        ] {
            group.bench_function(format!("proof_{algorithm}"), |b| {
                b.iter(|| {
                    key.proof("GET", black_box(URI), Some(TOKEN), Some(NONCE))
                        .expect("a proof")
                })
            });
        }
        group.finish();
    }
    bench.finish(&[], |ratios| {
        let default = backends()[0].0;
        for algorithm in ALGORITHMS {
            let line: Vec<String> = backends()
                .iter()
                .filter_map(|(name, _)| {
                    let ns = ratios.estimate(SIGNATURE, &format!("{name}_{algorithm}"))?;
                    Some(format!("{name} {}", fmt_ns(ns)))
                })
                .collect();
            if !line.is_empty() {
                ratios.line(format!("signature, {algorithm}: {}", line.join(", ")));
            }
        }
        let estimate = |ratios: &common::Ratios, group: &str, id: &str| ratios.estimate(group, id);
        if let (Some(aws_lc), Some(rust_crypto)) = (
            estimate(ratios, SIGNATURE, "aws_lc_RS256"),
            estimate(ratios, SIGNATURE, "rust_crypto_RS256"),
        ) {
            let ratio = aws_lc / rust_crypto;
            ratios.line(format!(
                "RS256: aws-lc {} vs RustCrypto (rsa 0.10) {} → {ratio:.2} (goal ≤ 0.3: {})",
                fmt_ns(aws_lc),
                fmt_ns(rust_crypto),
                verdict(ratio <= 0.3)
            ));
        }
        if let (Some(proof), Some(tables)) = (
            estimate(ratios, DPOP, "proof_ES256"),
            estimate(ratios, DPOP, "bare_ES256_p256_tables"),
        ) {
            let ratio = proof / tables;
            ratios.line(format!(
                "DPoP proof, ES256 ({default}): {} vs the p256-tables signature {} → {ratio:.2} \
                 (goal ≤ 0.4: {})",
                fmt_ns(proof),
                fmt_ns(tables),
                verdict(ratio <= 0.4)
            ));
        }
        if let (Some(proof), Some(bare), Some(bearer)) = (
            estimate(ratios, DPOP, "proof_EdDSA"),
            estimate(ratios, DPOP, "bare_EdDSA"),
            estimate(ratios, DPOP, "bearer_header"),
        ) {
            let ratio = proof / bare;
            ratios.line(format!(
                "DPoP proof, EdDSA ({default}): {} vs the bare signature {} → {ratio:.2} (goal \
                 ≤ 1.2: {}); a bearer request attaches its header in {}",
                fmt_ns(proof),
                fmt_ns(bare),
                verdict(ratio <= 1.2),
                fmt_ns(bearer)
            ));
        }
    });
}
