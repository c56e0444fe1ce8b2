//! `FileStore`: processes on one host share one token through a directory. Separate OS
//! processes (the `print_token` example) and providers in one process, against a real local
//! token endpoint; entries that do not open or have expired are never handed out, and a
//! store that fails is never worse than none.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use httpmock::prelude::*;
use token_refresh::store::FileStore;
use token_refresh::{AccessToken, Error, TokenProvider};

/// A fresh directory under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "token-refresh-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A source issuing `t1`, `t2`, … living `ttl`, counting its calls.
fn counting(ttl: Duration) -> (impl token_refresh::TokenSource, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let source = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { AccessToken::new(format!("t{n}"), ttl) }
    };
    (source, calls)
}

fn sealed(dir: &Path) -> FileStore {
    FileStore::new(dir).encryption_key([42; 32])
}

fn shared(dir: &Path, source: impl token_refresh::TokenSource) -> TokenProvider {
    TokenProvider::builder(source)
        .store(sealed(dir))
        .store_key("file-store-test")
        .try_build()
        .unwrap()
}

/// The one entry file in `dir`.
fn entry_file(dir: &Path) -> PathBuf {
    let entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "entry"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().unwrap()
}

#[test]
fn a_hundred_print_token_processes_make_one_token_request() {
    let server = MockServer::start();
    let endpoint = server.mock(|when, then| {
        when.method(POST).path("/oauth2/token");
        then.status(200)
            .header("content-type", "application/json")
            .body(token_json("tok-shared", 3600).to_string());
    });
    let dir = TempDir::new("print-token");
    let credentials = dir.path().with_extension("credentials.json");
    std::fs::write(
        &credentials,
        serde_json::json!({"serviceAccount": {
            "keyId": KEY_ID, "secret": SECRET, "email": EMAIL, "algorithm": "HS256",
            "tokenEndpoint": server.url("/oauth2/token"),
        }})
        .to_string(),
    )
    .unwrap();
    for run in 0..100 {
        let output = example("print_token")
            .env("DT_CREDENTIALS_FILE", &credentials)
            .env("TOKEN_REFRESH_STORE_KEY", "11".repeat(32))
            .arg("--store-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "run {run}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "tok-shared");
    }
    let _ = std::fs::remove_file(&credentials);
    println!(
        "100 print_token processes with --store-dir: {} token requests",
        endpoint.calls()
    );
    assert_eq!(endpoint.calls(), 1);
    // Sealed on disk: the token is not in the file, which only its owner can read.
    let file = entry_file(dir.path());
    assert!(!String::from_utf8_lossy(&std::fs::read(&file).unwrap()).contains("tok-shared"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_providers_times_a_hundred_callers_on_a_cold_store_make_one_request() {
    let dir = TempDir::new("herd");
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(800));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let counter = calls.clone();
        let provider = shared(dir.path(), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                // A slow endpoint, so that every provider is refreshing at once.
                tokio::time::sleep(Duration::from_millis(200)).await;
                AccessToken::new(format!("t{n}"), Duration::from_secs(3600))
            }
        });
        for _ in 0..100 {
            let (provider, barrier) = (provider.clone(), barrier.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                provider.token().await.unwrap().expose_secret().to_owned()
            });
        }
    }
    while let Some(token) = tasks.join_next().await {
        assert_eq!(token.unwrap(), "t1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_restarted_process_takes_the_stored_token() {
    let dir = TempDir::new("restart");
    let (source, calls) = counting(Duration::from_secs(3600));
    let first = shared(dir.path(), source);
    let token = first.token().await.unwrap();
    drop(first);
    let (source, later_calls) = counting(Duration::from_secs(3600));
    let again = shared(dir.path(), source);
    let adopted = again.token().await.unwrap();
    assert_eq!(adopted.expose_secret(), token.expose_secret());
    assert!(adopted.expires_in().abs_diff(token.expires_in()) < Duration::from_secs(2));
    assert_eq!(
        calls.load(Ordering::SeqCst) + later_calls.load(Ordering::SeqCst),
        1
    );
    assert_eq!(again.health().store_ok, Some(true));
    assert_eq!(again.health().token_requests, 0);
}

/// What a second provider gets after the entry file was replaced by `replace`: never the
/// stored token unless it opens, but a token of its own.
async fn after_replacing_the_entry(replace: impl FnOnce(&Path, &Path)) -> String {
    let dir = TempDir::new("bad-entry");
    let (source, _) = counting(Duration::from_secs(3600));
    shared(dir.path(), source).token().await.unwrap();
    replace(dir.path(), &entry_file(dir.path()));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = shared(dir.path(), move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { AccessToken::new("own", Duration::from_secs(3600)) }
    });
    let token = provider.token().await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a token request of its own"
    );
    token.expose_secret().to_owned()
}

#[tokio::test]
async fn a_tampered_entry_is_never_handed_out() {
    let token = after_replacing_the_entry(|_, file| {
        let mut bytes = std::fs::read(file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(file, bytes).unwrap();
    })
    .await;
    assert_eq!(token, "own");
}

#[tokio::test]
async fn garbage_is_never_handed_out() {
    let token = after_replacing_the_entry(|_, file| {
        std::fs::write(file, b"{\"v\":1,\"token\":\"planted\"}").unwrap();
    })
    .await;
    assert_eq!(token, "own");
}

#[tokio::test]
async fn an_entry_of_another_key_is_never_handed_out() {
    // Another token's entry, sealed under its own store key, copied over this key's file.
    let other = TempDir::new("other-key");
    let (source, _) = counting(Duration::from_secs(3600));
    TokenProvider::builder(source)
        .store(sealed(other.path()))
        .store_key("another-key")
        .try_build()
        .unwrap()
        .token()
        .await
        .unwrap();
    let foreign = entry_file(other.path());
    let token = after_replacing_the_entry(|_, file| {
        std::fs::copy(&foreign, file).unwrap();
    })
    .await;
    assert_eq!(token, "own");
}

#[tokio::test]
async fn an_expired_entry_is_never_handed_out() {
    let dir = TempDir::new("expired");
    let (source, _) = counting(Duration::from_secs(1));
    shared(dir.path(), source).token().await.unwrap();
    // The stored token's wall-clock expiry passes (real time: the store's clock is the
    // system's, which paused tokio time does not move).
    std::thread::sleep(Duration::from_millis(1_100));
    let (source, calls) = counting(Duration::from_secs(3600));
    let token = shared(dir.path(), source).token().await.unwrap();
    assert_eq!(token.expose_secret(), "t1");
    assert_eq!(token.lifetime(), Duration::from_secs(3600));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_rejected_token_leaves_the_store_but_a_newer_one_stays() {
    let dir = TempDir::new("reject");
    let (source, calls) = counting(Duration::from_secs(3600));
    let a = shared(dir.path(), source);
    let t1 = a.token().await.unwrap();
    assert!(a.reject(&t1));
    let t2 = a.token().await.unwrap();
    assert_eq!(
        t2.expose_secret(),
        "t2",
        "the rejected entry was not adopted again"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Another process, started now, gets t2 from the store.
    let (source, b_calls) = counting(Duration::from_secs(3600));
    let b = shared(dir.path(), source);
    assert_eq!(b.token().await.unwrap().expose_secret(), "t2");
    assert_eq!(b_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_broken_store_is_no_worse_than_none_and_warns_once() {
    let logs = LogCapture::global();
    let dir = TempDir::new("broken");
    // A file where the directory should be: every store call fails.
    std::fs::write(dir.path(), b"not a directory").unwrap();
    let (source, calls) = counting(Duration::from_secs(3600));
    let provider = shared(dir.path(), source);
    for _ in 0..5 {
        let token = provider.token().await.unwrap();
        provider.invalidate(&token);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(provider.health().store_ok, Some(false));
    let warnings = logs
        .text()
        .lines()
        .filter(|l| l.contains("the token store failed"))
        .count();
    assert_eq!(warnings, 1, "{}", logs.text());
    let _ = std::fs::remove_file(dir.path());
}

#[tokio::test]
async fn a_store_without_a_key_or_sealing_is_refused_at_build() {
    let dir = TempDir::new("refused");
    let (source, _) = counting(Duration::from_secs(3600));
    let error = TokenProvider::builder(source)
        .store(sealed(dir.path()))
        .try_build()
        .unwrap_err();
    assert!(
        matches!(&error, Error::Config(m) if m.contains("store_key")),
        "{error}"
    );

    let (source, _) = counting(Duration::from_secs(3600));
    let error = TokenProvider::builder(source)
        .store(FileStore::new(dir.path()))
        .store_key("k")
        .try_build()
        .unwrap_err();
    assert!(
        matches!(&error, Error::Config(m) if m.contains("allow_plaintext")),
        "{error}"
    );

    // `build` cannot fail: the provider fails every call with the same error.
    let (source, calls) = counting(Duration::from_secs(3600));
    let provider = TokenProvider::builder(source)
        .store(FileStore::new(dir.path()))
        .store_key("k")
        .build();
    assert!(matches!(provider.token().await, Err(Error::Config(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn built_in_grants_derive_keys_that_change_with_the_secret_and_hide_it() {
    use token_refresh::{ClientCredentials, JwtBearer, ServiceAccount, TokenSource};
    let jwt = |secret: &str| {
        JwtBearer::new(ServiceAccount::new(KEY_ID, EMAIL, secret))
            .store_key()
            .unwrap()
    };
    assert_eq!(jwt(SECRET), jwt(SECRET));
    assert_ne!(jwt(SECRET), jwt("rotated-secret"));
    assert!(!jwt(SECRET).contains(SECRET) && !jwt(SECRET).contains(KEY_ID));
    let cc = |scope: &str| {
        ClientCredentials::new("https://auth.example.com/token", "client", "s3cret")
            .scope(scope)
            .store_key()
            .unwrap()
    };
    assert_ne!(cc("read"), cc("write"), "scope is part of the key");
    assert_ne!(
        ClientCredentials::new("https://auth.example.com/token", "client", "s3cret")
            .audience("a")
            .store_key(),
        ClientCredentials::new("https://auth.example.com/token", "client", "s3cret")
            .audience("b")
            .store_key(),
        "audience is part of the key"
    );
    assert!(cc("read").starts_with("client-credentials-") && !cc("read").contains("s3cret"));
}

/// The processes of a host move from key A to key B as `RedisStore::encryption_keys`
/// describes (`[A]`, then `[B, A]`, then `[B]`): the token stored under A is found by the
/// `[B, A]` process (copied under its B name) and by the `[B]` process: one token request.
#[tokio::test]
async fn a_host_moving_to_a_new_encryption_key_keeps_its_token() {
    let server = MockServer::start_async().await;
    let endpoint = token_endpoint(&server, |then| {
        then.status(200).json_body(token_json("t-rotated", 3600));
    })
    .await;
    let dir = TempDir::new("rotation");
    let (a, b) = ([0x0a; 32], [0x0b; 32]);
    let mut names = Vec::new();
    for keys in [vec![a], vec![b, a], vec![b]] {
        let provider = TokenProvider::builder(source(&server))
            .store(FileStore::new(dir.path()).encryption_keys(keys))
            .try_build()
            .unwrap();
        assert_eq!(provider.token().await.unwrap().expose_secret(), "t-rotated");
        assert_eq!(provider.health().store_ok, Some(true));
        let mut entries: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".entry"))
            .collect();
        entries.sort();
        names.push(entries);
    }
    assert_eq!(endpoint.calls_async().await, 1, "entries: {names:?}");
    assert_eq!(names[0].len(), 1);
    assert_eq!(names[1].len(), 2, "copied under the B name: {names:?}");
}
