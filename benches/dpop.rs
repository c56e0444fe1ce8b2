//! DPoP: what a proof costs per request, side by side in one run with what a bearer request
//! attaches (a header value clone) and with the bare signature of a message of the proof's
//! size, for ES256 (with P-256's precomputed tables, as proofs sign, and without, as
//! jsonwebtoken does) and EdDSA.
//!
//! Goals: a proof costs at most 1.2× its bare signature (the rest of the proof — claims,
//! base64, a fresh `jti` — costs little), ES256 ≤ 60 µs and EdDSA ≤ 30 µs on a 2-core machine.
//!
//! ```text
//! cargo bench --bench dpop
//! ```

mod common;

use std::hint::black_box;

use common::{Bench, fmt_ns, verdict};
use p256::ecdsa::signature::Signer as _;
use token_refresh::AccessToken;
use token_refresh::dpop::DpopKey;

const GROUP: &str = "dpop_proof";
const URI: &str = "https://api.example.com/v2/projects/my-project/devices?page_size=100";
const TOKEN: &str =
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJib3QiLCJjbmYiOnsiamt0IjoiYWJjIn19.c2lnbmF0dXJl";

fn main() {
    let mut bench = Bench::start();
    let es256 = DpopKey::generate();
    let eddsa = DpopKey::generate_ed25519();
    // Bare signatures over a message as long as a proof's signing input.
    let message = {
        let proof = es256
            .proof("GET", URI, Some(TOKEN), Some("server-nonce-0123456789"))
            .expect("a proof");
        let cut = proof.rfind('.').expect("three parts");
        proof.as_bytes()[..cut].to_vec()
    };
    let p256_key = p256::ecdsa::SigningKey::random(&mut chacha20poly1305::aead::OsRng);
    let tables_key =
        p256_tables::ecdsa::SigningKey::from_slice(&p256_key.to_bytes()).expect("the same key");
    let ed_key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let bearer = AccessToken::new(TOKEN, std::time::Duration::from_secs(3600)).expect("a token");
    {
        let mut group = bench.criterion.benchmark_group(GROUP);
        group.bench_function("bearer_header", |b| {
            b.iter(|| black_box(&bearer).header_value())
        });
        group.bench_function("bare_ES256", |b| {
            b.iter(|| {
                use p256_tables::ecdsa::signature::Signer as _;
                let signature: p256_tables::ecdsa::Signature = tables_key.sign(black_box(&message));
                signature
            })
        });
        group.bench_function("bare_ES256_untabled", |b| {
            b.iter(|| {
                let signature: p256::ecdsa::Signature = p256_key.sign(black_box(&message));
                signature
            })
        });
        group.bench_function("proof_ES256", |b| {
            b.iter(|| {
                es256
                    .proof(
                        "GET",
                        black_box(URI),
                        Some(TOKEN),
                        Some("server-nonce-0123456789"),
                    )
                    .expect("a proof")
            })
        });
        group.bench_function("bare_EdDSA", |b| {
            b.iter(|| ed25519_dalek::Signer::sign(&ed_key, black_box(&message)))
        });
        group.bench_function("proof_EdDSA", |b| {
            b.iter(|| {
                eddsa
                    .proof(
                        "GET",
                        black_box(URI),
                        Some(TOKEN),
                        Some("server-nonce-0123456789"),
                    )
                    .expect("a proof")
            })
        });
        group.finish();
    }
    bench.finish(&[], |ratios| {
        let bearer = ratios.estimate(GROUP, "bearer_header");
        if let (Some(tabled), Some(untabled)) = (
            ratios.estimate(GROUP, "bare_ES256"),
            ratios.estimate(GROUP, "bare_ES256_untabled"),
        ) {
            ratios.line(format!(
                "P-256 signature with precomputed tables (p256 0.14) {} vs without (0.13, \
                 jsonwebtoken's) {} → {:.2}",
                fmt_ns(tabled),
                fmt_ns(untabled),
                tabled / untabled
            ));
        }
        for (algorithm, goal_ns) in [("ES256", 60_000.0), ("EdDSA", 30_000.0)] {
            let proof = ratios.estimate(GROUP, &format!("proof_{algorithm}"));
            let bare = ratios.estimate(GROUP, &format!("bare_{algorithm}"));
            if let (Some(proof), Some(bare), Some(bearer)) = (proof, bare, bearer) {
                let ratio = proof / bare;
                ratios.line(format!(
                    "DPoP proof, {algorithm}: {} vs bare signature {} → ratio {ratio:.2} (goal ≤ \
                     1.2: {}); absolute goal ≤ {}: {}; a bearer request attaches its header in {}",
                    fmt_ns(proof),
                    fmt_ns(bare),
                    verdict(ratio <= 1.2),
                    fmt_ns(goal_ns),
                    verdict(proof <= goal_ns),
                    fmt_ns(bearer),
                ));
            }
        }
    });
}
