//! What an operator searching the logs sees: every refresh logs one INFO line (WARN when it
//! fails) naming the provider and why it ran; a store outage one WARN line naming the
//! provider. Captured from a real `tracing-subscriber` at INFO.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use token_refresh::store::FileStore;
use token_refresh::{AccessToken, TokenProvider};
use token_refresh_emulator::Emulator;

/// Everything logged at INFO and above while it is the thread's default subscriber.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// The lines logged since the last call.
    fn take(&self) -> Vec<String> {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap());
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The one line `lines` must be: `level`, the refresh message, `provider` and `reason`.
fn one_refresh_line(lines: &[String], provider: &str, reason: &str) {
    assert_eq!(lines.len(), 1, "one line per refresh: {lines:#?}");
    let line = &lines[0];
    assert!(
        line.starts_with(" INFO") && line.contains("access token refreshed"),
        "{line}"
    );
    assert!(line.contains(&format!("provider={provider}")), "{line}");
    assert!(line.contains(&format!("reason=\"{reason}\"")), "{line}");
}

/// Two calls through `AuthLayer` to an API that accepts the first and rejects the second
/// once (a revocation): the layer refreshes and resends.
async fn revoke_once(provider: &TokenProvider) {
    use tower::{Service as _, ServiceExt as _};

    let seen = Arc::new(AtomicUsize::new(0));
    let api = tower::service_fn(move |_: http::Request<String>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let status = if n == 1 { 401 } else { 200 };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(status)
                    .body(String::new())
                    .unwrap(),
            )
        }
    });
    let mut service = tower::ServiceBuilder::new()
        .layer(token_refresh::AuthLayer::new(provider.clone()))
        .service(api);
    for _ in 0..2 {
        let request = http::Request::get("https://api.example.com/v1")
            .body(String::new())
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// Lets the background refresh task run to its end (paused time: no real waiting).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn every_refresh_logs_one_line_with_its_reason_and_the_provider_name() {
    let capture = Capture::default();
    let _guard = capture.install();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let provider = TokenProvider::builder(move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move { AccessToken::new(format!("t{n}"), Duration::from_secs(600)) }
    })
    .name("orders-api")
    .build();

    let first = provider.token().await.unwrap();
    one_refresh_line(&capture.take(), "orders-api", "first");

    // Into the proactive window (the last 120 s of a 600 s token): the caller keeps the
    // token, one background refresh runs.
    tokio::time::advance(Duration::from_secs(500)).await;
    let kept = provider.token().await.unwrap();
    assert!(kept.ptr_eq(&first), "callers keep the valid token");
    settle().await;
    one_refresh_line(&capture.take(), "orders-api", "proactive");

    // A token the API had accepted, then rejects: a revocation, through `AuthLayer`.
    revoke_once(&provider).await;
    one_refresh_line(&capture.take(), "orders-api", "revoked");

    let current = provider.token().await.unwrap();
    provider.invalidate(&current);
    provider.token().await.unwrap();
    one_refresh_line(&capture.take(), "orders-api", "invalidated");

    // 250 s left, before the proactive window; a caller needs 300 s (half the lifetime,
    // the most it may ask for).
    tokio::time::advance(Duration::from_secs(350)).await;
    provider
        .token_valid_for(Duration::from_secs(400))
        .await
        .unwrap();
    one_refresh_line(&capture.take(), "orders-api", "min-validity");

    // Past the hard margin, with nothing calling in the proactive window.
    tokio::time::advance(Duration::from_secs(590)).await;
    provider.token().await.unwrap();
    one_refresh_line(&capture.take(), "orders-api", "expired");
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn the_provider_is_named_after_the_endpoint_host_and_the_client() {
    let emulator = Emulator::start().await.unwrap();
    let capture = Capture::default();
    let _guard = capture.install();
    let provider = TokenProvider::new(emulator.client_credentials());
    provider.token().await.unwrap();
    one_refresh_line(
        &capture.take(),
        &format!("127.0.0.1/{}", emulator.client_id()),
        "first",
    );
}

#[tokio::test]
async fn a_store_outage_logs_one_warning_naming_the_provider() {
    let emulator = Emulator::start().await.unwrap();
    let capture = Capture::default();
    let _guard = capture.install();
    // A store whose directory cannot exist: every call fails.
    let store = FileStore::new("/dev/null/token-store").allow_plaintext(true);
    let provider = TokenProvider::builder(emulator.client_credentials())
        .name("billing")
        .store(store)
        .try_build()
        .unwrap();
    let token = provider.token().await.unwrap();
    let lines = capture.take();
    let warnings: Vec<_> = lines.iter().filter(|l| l.starts_with(" WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning per outage: {lines:#?}");
    assert!(
        warnings[0].contains("the token store failed") && warnings[0].contains("provider=billing"),
        "{}",
        warnings[0]
    );
    let refreshed: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("access token refreshed"))
        .cloned()
        .collect();
    one_refresh_line(&refreshed, "billing", "first");
    assert!(
        refreshed[0].contains("from=\"token endpoint\""),
        "{}",
        refreshed[0]
    );

    // Still down: no second warning.
    provider.invalidate(&token);
    provider.token().await.unwrap();
    let lines = capture.take();
    assert!(!lines.iter().any(|l| l.starts_with(" WARN")), "{lines:#?}");
    assert_eq!(provider.health().store_ok, Some(false));
}
