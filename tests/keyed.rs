//! One credential, many audiences: a keyed provider gives each `TokenParams` its own token
//! and refresh, both integrations pick the key per route, a route steps up on
//! `insufficient_scope`, and refresh tokens keep their `resource` — all counted at the
//! emulator, which records what each token was granted (`/v2/whoami`).

use std::collections::HashMap;
use std::sync::Arc;

use reqwest_middleware::ClientBuilder;
use serde_json::Value;
use token_refresh::{
    AuthLayer, AuthMiddleware, KeyedTokenProvider, OAuthClient, RefreshToken, TokenParams,
    TokenProvider,
};
use token_refresh_emulator::Emulator;

/// What the emulator says a token was granted.
async fn whoami(emulator: &Emulator, token: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}/whoami", emulator.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[test]
fn a_thousand_callers_over_five_keys_make_five_token_requests_each_getting_its_keys_token() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let emulator = Emulator::start().await.unwrap();
        let keyed = TokenProvider::keyed(emulator.client_credentials());
        let keys: Vec<TokenParams> = (0..5)
            .map(|i| {
                TokenParams::scope(format!("api-{i}"))
                    .with_resource(format!("https://api-{i}.example"))
            })
            .collect();
        let barrier = Arc::new(tokio::sync::Barrier::new(1_000));
        let tasks: Vec<_> = (0..1_000)
            .map(|n| {
                let (keyed, barrier, params) =
                    (keyed.clone(), Arc::clone(&barrier), keys[n % 5].clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    (n % 5, keyed.token_for(&params).await.unwrap())
                })
            })
            .collect();
        let mut per_key: HashMap<usize, Vec<String>> = HashMap::new();
        for task in tasks {
            let (key, token) = task.await.unwrap();
            per_key
                .entry(key)
                .or_default()
                .push(token.expose_secret().to_owned());
        }
        assert_eq!(emulator.stats().token_requests, 5, "one per key");
        assert_eq!(keyed.keys(), 5);
        let mut seen = Vec::new();
        for (key, tokens) in per_key {
            assert_eq!(tokens.len(), 200);
            assert!(tokens.iter().all(|t| *t == tokens[0]), "one token per key");
            let granted = whoami(&emulator, &tokens[0]).await;
            assert_eq!(granted["scope"], format!("api-{key}"), "{granted}");
            assert_eq!(
                granted["resources"],
                serde_json::json!([format!("https://api-{key}.example")])
            );
            seen.push(tokens[0].clone());
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 5, "no two keys share a token");
    });
}

#[tokio::test]
async fn both_integrations_send_each_route_its_own_token() {
    let emulator = Emulator::start().await.unwrap();
    let keyed = TokenProvider::keyed(emulator.client_credentials());
    let origin = emulator.origin();
    let whoami_url = format!("{}/whoami", emulator.api_url());

    let client = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthMiddleware::keyed(keyed.clone())
                .route(&origin, TokenParams::scope("read"))
                .route(&format!("{origin}/v2/whoami"), TokenParams::scope("whoami")),
        )
        .build();
    let response = client.get(&whoami_url).send().await.unwrap();
    let granted: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(granted["scope"], "whoami", "the longest prefix wins");
    let projects = client
        .get(format!("{}/projects", emulator.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(projects.status(), 200);
    assert_eq!(
        emulator.stats().token_requests,
        2,
        "one token per route's key"
    );

    // An unrouted origin gets no token.
    let other = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthMiddleware::keyed(keyed.clone())
                .route("https://elsewhere.example", TokenParams::scope("x")),
        )
        .build();
    assert_eq!(other.get(&whoami_url).send().await.unwrap().status(), 401);

    // The tower layer, the same keys: no new token request.
    use tower::{Service as _, ServiceExt as _};
    let mut service = tower::ServiceBuilder::new()
        .layer(
            AuthLayer::keyed(keyed)
                .route(&format!("{origin}/v2/whoami"), TokenParams::scope("whoami")),
        )
        .service(hyper_client());
    let request = http::Request::get(&whoami_url)
        .body(http_body_util::Full::<bytes::Bytes>::default())
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(emulator.stats().token_requests, 2);
}

fn hyper_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[test]
fn route_parameters_need_a_keyed_provider() {
    let provider = TokenProvider::new(|| async {
        token_refresh::AccessToken::new("t", std::time::Duration::from_secs(60))
    });
    let policy =
        AuthMiddleware::new(provider).route("https://a.example", TokenParams::scope("read"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(policy)
            .build();
        let error = client.get("https://a.example/").send().await.unwrap_err();
        let error = token_refresh::Error::find(&error).expect("the token error");
        assert!(error.to_string().contains("keyed provider"), "{error}");
    });
}

/// The route asks for `read`; the API wants `admin` on `/v2/whoami` and says so. One step-up
/// (a token for `admin read`), one resend, 200; the route keeps the wider key.
#[tokio::test]
async fn insufficient_scope_steps_up_once_and_the_route_keeps_the_wider_token() {
    let emulator = Emulator::start().await.unwrap();
    emulator.require_scope("/v2/whoami", "admin");
    let keyed = TokenProvider::keyed(emulator.client_credentials());
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(
            AuthMiddleware::keyed(keyed.clone())
                .route(&emulator.origin(), TokenParams::scope("read")),
        )
        .build();
    let url = format!("{}/whoami", emulator.api_url());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let granted: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(granted["scope"], "admin read");
    let stats = emulator.stats();
    assert_eq!((stats.token_requests, stats.insufficient_scope), (2, 1));

    for _ in 0..10 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    let stats = emulator.stats();
    assert_eq!(
        (stats.token_requests, stats.insufficient_scope),
        (2, 1),
        "the route kept the stepped-up key: no more 403s, no more token requests"
    );
}

/// An API that answers `insufficient_scope` to every token — naming a new scope each time —
/// cannot turn calls into token requests: the step-ups of a route are rate-limited.
#[tokio::test]
async fn an_api_that_always_wants_more_scope_costs_a_bounded_number_of_token_requests() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use token_refresh_emulator::{Answer, ScriptedServer};

    let emulator = Emulator::start().await.unwrap();
    let asked = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&asked);
    let api = ScriptedServer::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        Answer::json(403, r#"{"error":"forbidden"}"#).header(
            "www-authenticate",
            format!(r#"Bearer error="insufficient_scope", scope="scope-{n}""#),
        )
    })
    .await
    .unwrap();
    let keyed = TokenProvider::keyed(emulator.client_credentials());
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::keyed(keyed).route(&api.url(""), TokenParams::scope("read")))
        .build();
    for _ in 0..1_000 {
        assert_eq!(
            client.get(api.url("/thing")).send().await.unwrap().status(),
            403
        );
    }
    let requests = emulator.stats().token_requests;
    println!("1,000 calls to an API that always wants another scope: {requests} token requests");
    assert!(requests <= 5, "{requests} token requests");
}

/// RFC 8707 on refresh: the `resource` goes with every refresh, so every token of the series
/// is for it (checked at the emulator, which records what each token request asked).
#[tokio::test]
async fn every_refresh_of_a_refresh_token_keeps_its_resource() {
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(
        RefreshToken::new(
            emulator.token_url(),
            OAuthClient::new(emulator.client_id(), emulator.client_secret()),
            emulator.issue_refresh_token(),
        )
        .resource("https://api.example.com/mcp"),
    );
    for _ in 0..5 {
        let token = provider.token().await.unwrap();
        let granted = whoami(&emulator, token.expose_secret()).await;
        assert_eq!(
            granted["resources"],
            serde_json::json!(["https://api.example.com/mcp"])
        );
        provider.invalidate(&token);
    }
    let stats = emulator.stats();
    assert_eq!(
        (stats.refresh_token_grants, stats.refresh_token_reuses),
        (5, 0)
    );
}

#[tokio::test]
async fn a_keyed_refresh_token_series_gives_each_key_its_resource() {
    let emulator = Emulator::start().await.unwrap();
    let keyed = KeyedTokenProvider::new(RefreshToken::new(
        emulator.token_url(),
        OAuthClient::new(emulator.client_id(), emulator.client_secret()),
        emulator.issue_refresh_token(),
    ));
    for resource in [
        "https://a.example",
        "https://b.example",
        "https://a.example",
    ] {
        let token = keyed
            .token_for(&TokenParams::resource(resource))
            .await
            .unwrap();
        let granted = whoami(&emulator, token.expose_secret()).await;
        assert_eq!(granted["resources"], serde_json::json!([resource]));
    }
    let stats = emulator.stats();
    assert_eq!(
        (stats.refresh_token_grants, stats.refresh_token_reuses),
        (2, 0),
        "two keys, one rotating series, no reuse"
    );
}
