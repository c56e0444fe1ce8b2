//! Revocations against the storm guard: a token the API had accepted and then rejects is
//! refreshed at once (within the revocation allowance), while an API that rejects fresh
//! tokens still cannot turn calls into token requests. Against one real local server that is
//! both the token endpoint and an API that revokes on demand.
#![cfg(all(feature = "reqwest", feature = "tower"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::json;
use token_refresh::{AuthMiddleware, AuthService, JwtBearer, TokenProvider};
use tower::ServiceExt;

/// A token endpoint (`POST /oauth2/token`, issuing `tok-1`, `tok-2`, …) and an API on one
/// loopback server. `/v2/…` accepts the tokens that were not revoked; `/reject` rejects
/// every token.
struct RevokingApi {
    served: Served,
    issued: Arc<AtomicUsize>,
    /// Tokens numbered below this are revoked.
    valid_from: Arc<AtomicUsize>,
}

impl RevokingApi {
    async fn start() -> Self {
        let issued = Arc::new(AtomicUsize::new(0));
        let valid_from = Arc::new(AtomicUsize::new(0));
        let (counter, floor) = (issued.clone(), valid_from.clone());
        let served = serve(move |request| {
            if request.uri.path() == "/oauth2/token" {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                return json_response(200, &token_json(&format!("tok-{n}"), 3600), &[]);
            }
            let number = request
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer tok-"))
                .and_then(|n| n.parse::<usize>().ok());
            let valid = request.uri.path() != "/reject"
                && number.is_some_and(|n| n >= floor.load(Ordering::SeqCst));
            if valid {
                json_response(200, &json!({"ok": true}), &[])
            } else {
                json_response(
                    401,
                    &json!({"error": "revoked"}),
                    &[("www-authenticate", r#"Bearer error="invalid_token""#)],
                )
            }
        })
        .await;
        Self {
            served,
            issued,
            valid_from,
        }
    }

    /// Revokes every token issued so far.
    fn revoke(&self) {
        let next = self.issued.load(Ordering::SeqCst) + 1;
        self.valid_from.store(next, Ordering::SeqCst);
    }

    fn token_requests(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    fn url(&self, path: &str) -> String {
        self.served.url(path)
    }

    fn provider(&self) -> TokenProvider {
        TokenProvider::new(JwtBearer::new(account()).token_url(self.url("/oauth2/token")))
    }

    fn reqwest_client(&self) -> ClientWithMiddleware {
        ClientBuilder::new(reqwest::Client::new())
            .with(AuthMiddleware::new(self.provider()))
            .build()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_every_700_ms_under_load_cost_one_refresh_each_and_fail_nothing() {
    const REVOCATIONS: usize = 8;
    const SENDERS: usize = 32;
    let api = Arc::new(RevokingApi::start().await);
    let client = api.reqwest_client();
    let stop = Arc::new(AtomicBool::new(false));
    let revoker = {
        let (api, stop) = (api.clone(), stop.clone());
        tokio::spawn(async move {
            for _ in 0..REVOCATIONS {
                tokio::time::sleep(Duration::from_millis(700)).await;
                api.revoke();
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    // Senders keep calls in flight until the last revocation; every seventh call is
    // cancelled after a random 0–3 ms, mid-send or mid-refresh.
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let (client, stop, url) = (client.clone(), stop.clone(), api.url("/v2/things"));
        senders.spawn(async move {
            let (mut ok, mut failed, mut cancelled) = (0usize, Vec::new(), 0usize);
            for call in 0..100_000usize {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let send = client.get(&url).send();
                let status = if (call + sender) % 7 == 0 {
                    let patience = Duration::from_micros(fastrand::u64(0..3_000));
                    match tokio::time::timeout(patience, send).await {
                        Ok(response) => response.map(|r| r.status().as_u16()),
                        Err(_) => {
                            cancelled += 1;
                            continue;
                        }
                    }
                } else {
                    send.await.map(|r| r.status().as_u16())
                };
                match status {
                    Ok(200) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed, cancelled)
        });
    }
    let (mut ok, mut failed, mut cancelled) = (0, Vec::new(), 0);
    while let Some(result) = senders.join_next().await {
        let (o, f, c) = result.unwrap();
        ok += o;
        failed.extend(f);
        cancelled += c;
    }
    revoker.await.unwrap();
    let during = api.token_requests();

    // After the storm, every call succeeds.
    for _ in 0..200 {
        let response = client.get(api.url("/v2/things")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }

    let completed = ok + failed.len();
    let success = ok as f64 / completed as f64;
    println!(
        "{REVOCATIONS} revocations 700 ms apart under load: {completed} calls completed, \
         {cancelled} cancelled, {:.3} % succeeded, {during} token requests ({:.2} per revocation)",
        success * 100.0,
        (during - 1) as f64 / REVOCATIONS as f64,
    );
    assert!(completed >= 1_000, "only {completed} calls: no load");
    assert!(
        success >= 0.99,
        "{} failed: {:?}",
        failed.len(),
        &failed[..10.min(failed.len())]
    );
    assert!(
        during <= 1 + 2 * REVOCATIONS,
        "{during} token requests for {REVOCATIONS} revocations"
    );
    assert_eq!(
        api.token_requests(),
        during,
        "no token request after the storm"
    );
}

#[tokio::test]
async fn two_revocations_a_second_apart_fail_no_call() {
    let api = RevokingApi::start().await;
    let client = api.reqwest_client();
    let mut statuses = Vec::new();
    for step in 0..60 {
        if step == 20 || step == 40 {
            api.revoke();
        }
        let request = if step % 2 == 0 {
            client.get(api.url("/v2/things"))
        } else {
            client
                .post(api.url("/v2/things"))
                .header("content-type", "application/json")
                .body(json!({ "step": step }).to_string())
        };
        statuses.push(request.send().await.unwrap().status().as_u16());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = statuses.iter().filter(|s| **s != 200).count();
    println!(
        "two revocations 1 s apart: {failed} failed calls of {}, {} token requests",
        statuses.len(),
        api.token_requests()
    );
    assert_eq!(failed, 0, "{statuses:?}");
    assert_eq!(api.token_requests(), 3);
}

#[tokio::test]
async fn a_tower_post_after_a_second_revocation_is_resent() {
    let api = RevokingApi::start().await;
    let service = AuthService::new(
        Client::builder(TokioExecutor::new()).build_http::<_>(),
        api.provider(),
    );
    let post = |n: u32| {
        Request::post(api.url("/v2/things"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json!({ "n": n }).to_string())))
            .unwrap()
    };
    let mut statuses = Vec::new();
    for n in 0..4 {
        if n == 1 || n == 2 {
            api.revoke();
        }
        let response = service.clone().oneshot(post(n)).await.unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200]);
    assert_eq!(api.token_requests(), 3);
}

#[tokio::test]
async fn a_route_that_rejects_every_token_beside_one_that_accepts_them() {
    let api = RevokingApi::start().await;
    let client = api.reqwest_client();
    let (mut accepted, mut rejected) = (0, 0);
    for call in 0..1_000 {
        let path = if call % 2 == 0 {
            "/v2/things"
        } else {
            "/reject"
        };
        let status = client.get(api.url(path)).send().await.unwrap().status();
        match (path, status.as_u16()) {
            ("/v2/things", 200) => accepted += 1,
            ("/reject", 401) => rejected += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let token_requests = api.token_requests();
    println!(
        "1,000 calls alternating between an accepting and an always-401 route: \
         {token_requests} token requests"
    );
    assert_eq!((accepted, rejected), (500, 500));
    assert!(token_requests <= 10, "{token_requests} token requests");
}
