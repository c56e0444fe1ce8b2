//! Keys: what signing one assertion costs per algorithm, and a cold herd with an RS256 key.
//!
//! - `assertion_signature` (criterion): for RS256, PS256, ES256, EdDSA and HS256, the crate's
//!   `SigningKey::sign` (what one assertion costs beyond building its JSON: re-reading
//!   nothing, one signature through jsonwebtoken's rust_crypto backend, base64) side by
//!   side with the bare `jsonwebtoken::crypto::sign` on a prepared key, in one run.
//! - `keys_rs256_herd`: 10,000 tasks on a cold cache, released together, with a
//!   Google-style RS256 `JwtBearer::signed_by` source against the emulator on loopback:
//!   token requests (goal exactly 1) and caller latency.
//!
//! ```text
//! cargo bench --bench keys
//! ```

mod common;

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Bench, Mode, fmt_dur, fmt_ns, multi_thread_runtime, percentile, verdict};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use token_refresh::{JwtBearer, Signer, SigningAlgorithm, SigningKey, TokenProvider};
use token_refresh_emulator::Emulator;

const GROUP: &str = "assertion_signature";
const ID_HERD: &str = "keys_rs256_herd";
const HERD_CALLERS: usize = 10_000;
/// A JWT signing input of the size our assertions have.
const MESSAGE: &[u8] = b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIiwidHlwIjoiSldUIn0.eyJpc3MiOiJyb2JvdEBleGFtcGxlLmNvbSIsImF1ZCI6Imh0dHBzOi8vb2F1dGgyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDAxODAsImp0aSI6IjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmIn0";

fn pem(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name),
    )
    .expect("the test keys are in tests/keys")
}

/// The crate's key and jsonwebtoken's prepared key, per algorithm.
fn cases() -> Vec<(SigningAlgorithm, SigningKey, jsonwebtoken::EncodingKey)> {
    let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(&pem("rsa-pkcs8.pem")).expect("an RSA key");
    let rsa_der = rsa.to_pkcs1_der().expect("PKCS#1");
    let ec = p256::SecretKey::from_pkcs8_pem(&pem("ec-pkcs8.pem")).expect("a P-256 key");
    let ec_der = ec.to_pkcs8_der().expect("PKCS#8");
    let ed = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem("ed25519.pem")).expect("Ed25519");
    let ed_der = ed.to_pkcs8_der().expect("PKCS#8");
    let key = |name: &str| SigningKey::from_pem(pem(name)).expect("a test key");
    vec![
        (
            SigningAlgorithm::RS256,
            key("rsa-pkcs8.pem"),
            jsonwebtoken::EncodingKey::from_rsa_der(rsa_der.as_bytes()),
        ),
        (
            SigningAlgorithm::PS256,
            key("rsa-pkcs8.pem")
                .algorithm(SigningAlgorithm::PS256)
                .expect("RSA signs PS256"),
            jsonwebtoken::EncodingKey::from_rsa_der(rsa_der.as_bytes()),
        ),
        (
            SigningAlgorithm::ES256,
            key("ec-pkcs8.pem"),
            jsonwebtoken::EncodingKey::from_ec_der(ec_der.as_bytes()),
        ),
        (
            SigningAlgorithm::EdDSA,
            key("ed25519.pem"),
            jsonwebtoken::EncodingKey::from_ed_der(ed_der.as_bytes()),
        ),
        (
            SigningAlgorithm::HS256,
            SigningKey::from_secret(b"0123456789abcdef0123456789abcdef").expect("a secret"),
            jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        ),
    ]
}

fn main() {
    let mut bench = Bench::start();
    let rt = common::current_thread_runtime();
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    {
        let mut group = bench.criterion.benchmark_group(GROUP);
        for (algorithm, key, bare) in cases() {
            let jwa = match algorithm {
                SigningAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
                SigningAlgorithm::PS256 => jsonwebtoken::Algorithm::PS256,
                SigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
                SigningAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
                _ => jsonwebtoken::Algorithm::HS256,
            };
            group.bench_function(format!("crate_{algorithm}"), |b| {
                b.iter(|| rt.block_on(key.sign(black_box(MESSAGE))).expect("signs"))
            });
            group.bench_function(format!("bare_{algorithm}"), |b| {
                b.iter(|| {
                    jsonwebtoken::crypto::sign(black_box(MESSAGE), &bare, jwa).expect("signs")
                })
            });
        }
        group.finish();
    }
    let herd = bench.args.measures(ID_HERD).then(|| {
        let callers = match bench.args.mode {
            Mode::Test => 1_000,
            _ => HERD_CALLERS,
        };
        rs256_herd(callers)
    });
    bench.finish(&[ID_HERD], |ratios| {
        for algorithm in ["RS256", "PS256", "ES256", "EdDSA", "HS256"] {
            let ours = ratios.estimate(GROUP, &format!("crate_{algorithm}"));
            let bare = ratios.estimate(GROUP, &format!("bare_{algorithm}"));
            if let (Some(ours), Some(bare)) = (ours, bare) {
                ratios.line(format!(
                    "assertion signature, {algorithm}: SigningKey::sign {} vs bare jsonwebtoken \
                     sign {} → ratio {:.2}",
                    fmt_ns(ours),
                    fmt_ns(bare),
                    ours / bare
                ));
            }
        }
        if let Some((callers, requests, p50, p99, max)) = herd {
            ratios.line(format!(
                "RS256 herd, {callers} callers on a cold cache against the emulator: {requests} \
                 token request(s) (goal exactly 1: {}); caller latency p50 {}, p99 {}, max {}",
                verdict(requests == 1),
                fmt_dur(p50),
                fmt_dur(p99),
                fmt_dur(max)
            ));
        }
    });
}

fn rs256_herd(callers: usize) -> (usize, u64, Duration, Duration, Duration) {
    let rt = multi_thread_runtime();
    rt.block_on(async {
        let emulator = Emulator::start().await.expect("the emulator starts");
        let key = SigningKey::from_pem(pem("rsa-pkcs8.pem"))
            .expect("an RSA key")
            .key_id("google-style");
        let issuer = "robot@my-project.iam.gserviceaccount.com";
        emulator
            .register_key(issuer, &key.public_jwk().expect("a public key"))
            .expect("registered");
        let provider = TokenProvider::new(
            JwtBearer::signed_by(emulator.token_url(), issuer, key)
                .claim("scope", "https://www.googleapis.com/auth/cloud-platform"),
        );
        let barrier = Arc::new(tokio::sync::Barrier::new(callers));
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let provider = provider.clone();
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    let start = Instant::now();
                    provider.token().await.expect("the herd gets a token");
                    start.elapsed()
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(callers);
        for task in tasks {
            latencies.push(task.await.expect("a herd task panicked"));
        }
        latencies.sort_unstable();
        let requests = emulator.stats().token_requests;
        (
            callers,
            requests,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or_default(),
        )
    })
}
