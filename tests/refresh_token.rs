//! The refresh-token grant against the emulator, which rotates refresh tokens and revokes a
//! series whose refresh token is spent twice: rotation in one process, `invalid_grant` as
//! "re-authorization needed", copies without a store dying loudly, and copies sharing a
//! `FileStore` rotating safely.

mod common;

use common::LogCapture;
use token_refresh::store::{FileStore, StoreConfig, StoreError, TokenStore};
use token_refresh::{ClientAuth, Error, OAuthClient, RefreshToken, TokenProvider, TokenSource};
use token_refresh_emulator::Emulator;

fn client(emulator: &Emulator) -> OAuthClient {
    OAuthClient::new(emulator.client_id(), emulator.client_secret())
}

fn source(emulator: &Emulator, refresh_token: &str) -> RefreshToken {
    RefreshToken::new(emulator.token_url(), client(emulator), refresh_token)
}

/// A provider over `source` sharing `dir` (sealed) with every other built the same way.
fn shared(source: RefreshToken, dir: &std::path::Path) -> TokenProvider {
    TokenProvider::builder(source)
        .store(FileStore::new(dir).encryption_key([3; 32]))
        .try_build()
        .unwrap()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "token-refresh-{name}-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Fetches `n` times through `provider`, each time dropping the token so the next refresh
/// spends the current refresh token.
async fn refresh_n(provider: &TokenProvider, n: usize) -> Result<(), Error> {
    for _ in 0..n {
        let token = provider.token().await?;
        provider.invalidate(&token);
    }
    Ok(())
}

#[tokio::test]
async fn twenty_rotations_in_one_process_spend_each_refresh_token_once() {
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(source(&emulator, &emulator.issue_refresh_token()));
    refresh_n(&provider, 20).await.unwrap();
    let stats = emulator.stats();
    assert_eq!(stats.refresh_token_grants, 20);
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.invalid_grants, 0);
}

#[tokio::test]
async fn scope_and_client_assertions_go_with_every_refresh() {
    let emulator = Emulator::start().await.unwrap();
    let source = RefreshToken::new(
        emulator.token_url(),
        OAuthClient::with_client_auth(
            emulator.client_id(),
            ClientAuth::client_secret_jwt(emulator.client_secret()),
        ),
        emulator.issue_refresh_token(),
    )
    .scope("offline_access read");
    source.fetch_token().await.unwrap();
    source.fetch_token().await.unwrap();
    assert_eq!(emulator.stats().refresh_token_grants, 2);
}

#[tokio::test]
async fn invalid_grant_means_reauthorization_and_is_permanent() {
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(source(&emulator, "rt-never-issued-by-this-server"));
    let error = provider.token().await.unwrap_err();
    let last = error.last_attempt();
    assert!(
        matches!(last, Error::ReauthorizationNeeded { error, .. } if error == "invalid_grant"),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert_eq!(error.oauth_error(), Some("invalid_grant"));
    assert!(error.to_string().contains("authorize again"), "{error}");
    // Permanent: one request, not a retry loop.
    assert_eq!(emulator.stats().token_requests, 1);
}

#[tokio::test]
async fn without_a_store_two_copies_of_one_series_kill_it_loudly() {
    let emulator = Emulator::start().await.unwrap();
    let refresh_token = emulator.issue_refresh_token();
    let first = source(&emulator, &refresh_token);
    let second = source(&emulator, &refresh_token);
    first.fetch_token().await.unwrap();
    // The second copy spends the refresh token the first one already spent: the server
    // sees a reuse and revokes the series...
    let error = second.fetch_token().await.unwrap_err();
    assert!(
        matches!(error, Error::ReauthorizationNeeded { .. }),
        "{error:?}"
    );
    // ...so the first copy's rotated refresh token is dead too.
    let error = first.fetch_token().await.unwrap_err();
    assert!(
        matches!(error, Error::ReauthorizationNeeded { .. }),
        "{error:?}"
    );
    let stats = emulator.stats();
    assert_eq!(stats.refresh_token_reuses, 1);
    assert_eq!(stats.invalid_grants, 2);
}

#[tokio::test]
async fn copies_sharing_a_store_rotate_one_series_without_a_reuse() {
    let emulator = Emulator::start().await.unwrap();
    let dir = temp_dir("refresh-share");
    let refresh_token = emulator.issue_refresh_token();
    let providers: Vec<TokenProvider> = (0..3)
        .map(|_| shared(source(&emulator, &refresh_token), &dir))
        .collect();
    for round in 0..7 {
        for provider in &providers {
            refresh_n(provider, 1)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
    let stats = emulator.stats();
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.invalid_grants, 0);
    // Each provider's refresh found a fresh access token in the store or fetched one.
    assert!(stats.refresh_token_grants >= 7, "{stats:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_refused_refresh_token_is_cleared_from_the_store_only_if_still_stored() {
    let emulator = Emulator::start().await.unwrap();
    let dir = temp_dir("refresh-clear");
    let refresh_token = emulator.issue_refresh_token();
    let provider = shared(source(&emulator, &refresh_token), &dir);
    refresh_n(&provider, 1).await.unwrap();
    let entries = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".refresh-token.entry"))
            .count()
    };
    assert_eq!(entries(&dir), 1, "the rotated refresh token is stored");
    // Kill the series behind the store's back: a copy without the store spends the
    // original refresh token again.
    let _ = source(&emulator, &refresh_token).fetch_token().await;
    let error = refresh_n(&provider, 1).await.unwrap_err();
    assert!(
        matches!(error.last_attempt(), Error::ReauthorizationNeeded { .. }),
        "{error:?}"
    );
    assert_eq!(entries(&dir), 0, "the refused refresh token was cleared");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn refresh_tokens_never_show_in_debug_errors_or_logs() {
    let logs = LogCapture::global();
    let emulator = Emulator::start().await.unwrap();
    let refresh_token = emulator.issue_refresh_token();
    let source = source(&emulator, &refresh_token);
    let debug = format!("{source:?}");
    assert!(!debug.contains(&refresh_token), "{debug}");
    source.fetch_token().await.unwrap();
    let error = self::source(&emulator, &refresh_token)
        .fetch_token()
        .await
        .unwrap_err();
    let text = format!("{error} {error:?} {}", logs.text());
    assert!(!text.contains(&refresh_token), "{text}");
    assert!(!text.contains(&emulator.client_secret()), "{text}");
}

#[tokio::test]
async fn an_empty_refresh_token_fails_before_anything_is_sent() {
    let emulator = Emulator::start().await.unwrap();
    let error = source(&emulator, "").fetch_token().await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::EmptyCredential {
                field: "refresh_token"
            }
        ),
        "{error:?}"
    );
    assert_eq!(emulator.stats().token_requests, 0);
}

/// A store that cannot compare-and-swap: a `FileStore` without `replace_if`.
#[derive(Debug)]
struct NoSwap(FileStore);

#[async_trait::async_trait]
impl TokenStore for NoSwap {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key).await
    }
    async fn put(
        &self,
        key: &str,
        entry: &[u8],
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.0.put(key, entry, ttl).await
    }
    async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        self.0.delete_if(key, expected).await
    }
    async fn try_lease(
        &self,
        key: &str,
        fence: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.0.try_lease(key, fence, ttl).await
    }
    async fn release(&self, key: &str, fence: &str) -> Result<(), StoreError> {
        self.0.release(key, fence).await
    }
    fn sealing(&self) -> StoreConfig {
        self.0.sealing()
    }
}

#[tokio::test]
async fn a_store_that_cannot_swap_is_refused_before_a_refresh_token_is_spent() {
    let emulator = Emulator::start().await.unwrap();
    let dir = temp_dir("refresh-noswap");
    let provider = TokenProvider::builder(source(&emulator, &emulator.issue_refresh_token()))
        .store(NoSwap(FileStore::new(&dir).encryption_key([3; 32])))
        .try_build()
        .unwrap();
    let error = provider.token().await.unwrap_err();
    assert!(
        matches!(error.last_attempt(), Error::Config(text) if text.contains("compare-and-swap")),
        "{error:?}"
    );
    assert_eq!(emulator.stats().token_requests, 0, "nothing was spent");
    std::fs::remove_dir_all(&dir).ok();
}
