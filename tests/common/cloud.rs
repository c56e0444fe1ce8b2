//! The questions every cloud source answers the same way, asked against the emulator: a
//! cold herd makes one request, tokens work through both integrations, short-lived tokens
//! are replaced before they expire, and a fleet store shares one token.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use token_refresh::store::FileStore;
use token_refresh::{AuthLayer, AuthMiddleware, TokenProvider, TokenSource};
use token_refresh_emulator::Emulator;
use tower::{ServiceBuilder, ServiceExt};

/// `callers` tasks released together by a barrier ask a cold provider for a token; every
/// one gets the same token. Run it on a multi-thread runtime.
pub async fn cold_herd(provider: &TokenProvider, callers: usize) {
    let started = std::time::Instant::now();
    let barrier = Arc::new(tokio::sync::Barrier::new(callers));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (provider, barrier) = (provider.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            provider.token().await.map(|t| t.expose_secret().to_owned())
        });
    }
    let mut tokens = std::collections::HashSet::new();
    while let Some(token) = tasks.join_next().await {
        tokens.insert(token.unwrap().unwrap());
    }
    assert_eq!(tokens.len(), 1, "every caller got the one token");
    println!(
        "cold herd: {callers} callers served in {:?}",
        started.elapsed()
    );
}

/// A reqwest client with `provider`'s middleware.
pub fn client(provider: TokenProvider) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider))
        .build()
}

/// The emulator's API answers 200 to a request through `AuthMiddleware` and to one
/// through `AuthLayer` over hyper-util's client, both with `provider`'s token.
pub async fn through_both_integrations(emulator: &Emulator, provider: &TokenProvider) {
    let url = format!("{}/projects", emulator.api_url());
    let response = client(provider.clone()).get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "through AuthMiddleware");

    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(provider.clone()))
        .service(http);
    let request = http::Request::get(&url).body(Full::default()).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200, "through AuthLayer");
}

/// With the emulator's tokens living one second, 25 requests 100 ms apart through the
/// middleware all succeed (no expired token is ever sent) and `requests()` (the source's
/// count at the emulator) shows the token was replaced at least twice. Real time: the
/// services are real local servers.
pub async fn refreshed_before_expiry(
    emulator: &Emulator,
    provider: TokenProvider,
    requests: impl Fn(&Emulator) -> u64,
) {
    emulator.set_token_ttl(Duration::from_secs(2));
    let client = client(provider);
    let url = format!("{}/projects", emulator.api_url());
    for i in 0..30 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        emulator.stats().api_unauthorized,
        0,
        "no request went out with an expired token"
    );
    // 3 s of requests with 2 s tokens replaced before their hard margin: at least 2.
    let count = requests(emulator);
    println!("2 s tokens: 30 requests, 0 rejected, {count} token requests");
    assert!(count >= 2, "{count} token requests");
    emulator.set_token_ttl(token_refresh_emulator::DEFAULT_TOKEN_TTL);
}

/// The storm guard's revocation path: after the emulator revokes every token, the next
/// call through the middleware is rejected, refreshes once (`requests()`, the source's
/// count at the emulator, goes up by one) and is resent with the new token.
pub async fn revocation_costs_one_refresh(
    emulator: &Emulator,
    provider: TokenProvider,
    requests: impl Fn(&Emulator) -> u64,
) {
    let client = client(provider);
    let url = format!("{}/projects", emulator.api_url());
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let (before, rejected) = (requests(emulator), emulator.stats().api_unauthorized);
    emulator.revoke_all();
    for _ in 0..3 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        requests(emulator),
        before + 1,
        "one refresh for the revocation"
    );
    assert_eq!(emulator.stats().api_unauthorized, rejected + 1);
}

/// Two providers over one file store (two processes of a fleet) with sources built by
/// `source`: the second takes the first's token, so the service saw one request.
pub async fn shared_through_a_store<S: TokenSource>(
    source: impl Fn() -> S,
    emulator: &Emulator,
    requests: impl Fn(&Emulator) -> u64,
) {
    assert!(source().store_key().is_some(), "the source has a store key");
    let dir = TempDir::new("cloud-store");
    let provider = |s| {
        TokenProvider::builder(s)
            .store(FileStore::new(&dir.0).encryption_key([9; 32]))
            .try_build()
            .unwrap()
    };
    let first = provider(source()).token().await.unwrap();
    let second = provider(source()).token().await.unwrap();
    assert_eq!(first.expose_secret(), second.expose_secret());
    assert_eq!(
        requests(emulator),
        1,
        "the second process used the stored token"
    );
}

/// A directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "token-refresh-{name}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that accepts connections and never answers: a host where nothing
/// speaks. Returns its URL and a count of the connections it took.
pub async fn black_hole() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (url, accepted)
}
