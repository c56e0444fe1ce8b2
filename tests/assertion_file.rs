//! Is an assertion signed elsewhere (`JwtBearer::from_assertion_file`) read afresh at every
//! exchange, are a missing or empty file clear errors that send nothing, and is the
//! assertion kept out of errors and logs like the ones this crate signs? And does
//! `JwtBearer::audience` change the signed `aud` but not where the request goes?

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::{Value, json};
use token_refresh::{Error, JwtBearer, TokenProvider};

/// Bounds every provider call: a test that hangs fails instead.
const LIMIT: Duration = Duration::from_secs(5);

/// A directory of its own under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "token-refresh-assertion-file-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A JWT-shaped assertion as another system would sign it (the signature is not checked by
/// these servers), telling `subject` apart.
fn foreign_jwt(subject: &str) -> String {
    let part = |text: String| URL_SAFE_NO_PAD.encode(text);
    format!(
        "{}.{}.{}",
        part(json!({"alg": "RS256", "kid": "projected-key", "typ": "JWT"}).to_string()),
        part(
            json!({"iss": "https://k8s.example.com", "sub": subject, "exp": 4_102_444_800u64})
                .to_string()
        ),
        part(format!("signature-of-{subject}-0123456789abcdef")),
    )
}

/// The form of every request a [`serve`] server got.
#[derive(Clone, Default)]
struct Forms(Arc<Mutex<Vec<Vec<u8>>>>);

impl Forms {
    fn record(&self, request: &Received) {
        self.0.lock().unwrap().push(request.body.clone());
    }
    fn values(&self, name: &str) -> Vec<String> {
        let forms = self.0.lock().unwrap();
        forms
            .iter()
            .map(|body| form_value(body, name).unwrap_or_default())
            .collect()
    }
}

/// A token endpoint that records every form and answers `tok-1`, `tok-2`, ….
async fn recording_token_server() -> (Served, Forms) {
    let forms = Forms::default();
    let recorder = forms.clone();
    let issued = AtomicUsize::new(0);
    let server = serve(move |request| {
        recorder.record(&request);
        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
        json_response(200, &token_json(&format!("tok-{n}"), 3600), &[])
    })
    .await;
    (server, forms)
}

async fn token_of(provider: &TokenProvider) -> Result<token_refresh::AccessToken, Error> {
    tokio::time::timeout(LIMIT, provider.token())
        .await
        .expect("the provider answered in time")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn the_file_is_read_again_at_every_exchange() {
    let dir = TempDir::new();
    let path = dir.file("assertion.jwt");
    let (a, b) = (foreign_jwt("A"), foreign_jwt("B"));
    write(&path, &format!("  {a}\n"));
    let (server, forms) = recording_token_server().await;
    let provider = TokenProvider::new(JwtBearer::from_assertion_file(
        server.url("/oauth2/token"),
        &path,
    ));

    let first = token_of(&provider).await.unwrap();
    assert_eq!(first.expose_secret(), "tok-1");
    assert_eq!(forms.values("assertion"), [a.as_str()], "trimmed");

    // Another system rotates the assertion on disk.
    write(&path, &format!("\r\n\t{b} \n"));
    // The cached token is still served without reading the file or asking the server.
    assert!(token_of(&provider).await.unwrap().ptr_eq(&first));
    assert_eq!(server.requests(), 1);

    provider.invalidate(&first);
    let second = token_of(&provider).await.unwrap();
    assert_eq!(second.expose_secret(), "tok-2");
    assert_eq!(
        forms.values("assertion"),
        [a, b],
        "the rotated assertion is sent"
    );
    assert_eq!(
        forms.values("grant_type"),
        [JwtBearer::GRANT_TYPE, JwtBearer::GRANT_TYPE]
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_missing_file_is_an_error_naming_the_path_and_sends_nothing() {
    let dir = TempDir::new();
    let path = dir.file("not-there.jwt");
    let (server, _) = recording_token_server().await;
    let provider = TokenProvider::new(JwtBearer::from_assertion_file(
        server.url("/oauth2/token"),
        &path,
    ));
    let error = token_of(&provider).await.unwrap_err();
    match &error {
        Error::AssertionFile { path: named, .. } => assert_eq!(named, &path),
        other => panic!("expected Error::AssertionFile, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn an_empty_or_blank_file_is_an_error_saying_so_and_sends_nothing() {
    let dir = TempDir::new();
    let (server, forms) = recording_token_server().await;
    for (name, content) in [("empty.jwt", ""), ("blank.jwt", "  \n\t\r\n ")] {
        let path = dir.file(name);
        write(&path, content);
        let before = server.requests();
        let provider = TokenProvider::builder(JwtBearer::from_assertion_file(
            server.url("/oauth2/token"),
            &path,
        ))
        .cooldown(Duration::ZERO)
        .build();
        let error = token_of(&provider).await.unwrap_err();
        assert!(
            matches!(&error, Error::AssertionFile { path: p, .. } if *p == path),
            "{name}: {error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("empty"),
            "{name}: {text}"
        );
        assert_eq!(server.requests(), before, "{name}: nothing sent");

        // Once something writes the assertion, the same provider uses it.
        let assertion = foreign_jwt(name);
        write(&path, &assertion);
        token_of(&provider).await.unwrap();
        assert_eq!(forms.values("assertion").last(), Some(&assertion));
    }
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn scopes_are_sent_with_the_file_assertion() {
    let dir = TempDir::new();
    let path = dir.file("assertion.jwt");
    let assertion = foreign_jwt("scoped");
    write(&path, &assertion);
    let (server, forms) = recording_token_server().await;
    let source = JwtBearer::from_assertion_file(server.url("/oauth2/token"), &path)
        .scope("api://my-api/.default")
        .scope("openid profile")
        .scope("openid");
    token_of(&TokenProvider::new(source)).await.unwrap();
    assert_eq!(server.requests(), 1);
    assert_eq!(
        forms.values("scope"),
        ["api://my-api/.default openid profile"]
    );
    assert_eq!(forms.values("assertion"), [assertion]);
    assert_eq!(forms.values("grant_type"), [JwtBearer::GRANT_TYPE]);
}

#[tokio::test]
async fn audience_sets_the_signed_aud_while_the_request_goes_to_the_token_url() {
    const AUDIENCE: &str = "https://issuer.example.com";
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let recorder = seen.clone();
    let server = serve(move |request| {
        let assertion = form_value(&request.body, "assertion").unwrap_or_default();
        recorder
            .lock()
            .unwrap()
            .push((request.uri.path().to_owned(), assertion));
        json_response(200, &token_json("aud-token", 3600), &[])
    })
    .await;
    let token_url = server.url("/oauth2/token");
    let source = JwtBearer::new(account())
        .token_url(&token_url)
        .audience(AUDIENCE);
    assert_eq!(source.url(), token_url);
    token_of(&TokenProvider::new(source)).await.unwrap();
    assert_eq!(server.requests(), 1);

    let (path, assertion) = seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/oauth2/token", "the request goes to the token URL");
    let payload = assertion.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["aud"], json!(AUDIENCE));
    assert_eq!(claims["iss"], json!(EMAIL));
}

/// A token endpoint that echoes the file's assertion in every string it returns — in an
/// error, and as a `token_type` — gets it scrubbed from the errors' `Display` and `Debug`;
/// neither they, the source's or the provider's `Debug` nor the TRACE logs show it or its
/// parts.
#[tokio::test]
async fn an_echoed_file_assertion_never_leaks() {
    let logs = LogCapture::global();
    let dir = TempDir::new();
    let path = dir.file("assertion.jwt");
    let assertion = foreign_jwt("echoed-and-secret");
    write(&path, &format!("{assertion}\n"));

    let error_server = serve(|request| {
        let assertion = form_value(&request.body, "assertion").unwrap_or_default();
        let body = json!({
            "error": format!("invalid_grant:{assertion}"),
            "error_description": format!("bad assertion {assertion}"),
            "error_uri": format!("https://idp.example.com/help?assertion={assertion}"),
        });
        json_response(400, &body, &[])
    })
    .await;
    let type_server = serve(|request| {
        let assertion = form_value(&request.body, "assertion").unwrap_or_default();
        json_response(
            200,
            &json!({"access_token": "tok", "token_type": assertion}),
            &[],
        )
    })
    .await;

    let mut texts = Vec::new();
    for server in [&error_server, &type_server] {
        let source = JwtBearer::from_assertion_file(server.url("/oauth2/token"), &path);
        texts.push(format!("{source:?}"));
        let provider = TokenProvider::builder(source).max_attempts(1).build();
        let error = token_of(&provider).await.unwrap_err();
        texts.extend([
            error.to_string(),
            format!("{error:?}"),
            format!("{provider:?}"),
        ]);
        assert_eq!(server.requests(), 1);
    }
    assert!(
        texts[1].starts_with("token endpoint rejected") && texts[1].contains("[REDACTED]"),
        "the echo arrived and was scrubbed: {}",
        texts[1]
    );
    texts.push(logs.text());

    let mut secrets = vec![assertion.clone()];
    // The payload and the signature tell this assertion apart; the header is shared.
    secrets.extend(assertion.split('.').skip(1).map(str::to_owned));
    for text in &texts {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "leaked {secret:.12}… in: {text}"
            );
        }
    }
}
