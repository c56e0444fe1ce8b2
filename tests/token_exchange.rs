//! The token-exchange grant: a projected-token file re-read at every exchange, GitHub
//! Actions' OIDC token service played by a local server, the form RFC 8693 wants, and the
//! issued token type kept.

mod common;

use std::sync::{Arc, Mutex};

use common::{Received, form_value, json_response, serve};
use serde_json::json;
use token_refresh::{
    Error, GitHubActionsToken, OAuthClient, SubjectTokenFile, SubjectTokenSource, TokenExchange,
    TokenProvider, TokenSource, token_types,
};
use token_refresh_emulator::Emulator;

fn temp_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "token-refresh-{name}-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ))
}

#[tokio::test]
async fn a_projected_token_rotated_on_disk_is_sent_as_it_is_now() {
    let emulator = Emulator::start().await.unwrap();
    let path = temp_file("projected");
    std::fs::write(&path, "first.projected.token\n").unwrap();
    let provider = TokenProvider::new(
        TokenExchange::new(emulator.token_url(), SubjectTokenFile::new(&path))
            .audience("https://api.example.com"),
    );
    let token = provider.token().await.unwrap();
    assert_eq!(token.issued_token_type(), Some(token_types::ACCESS_TOKEN));
    // The kubelet rewrites the file (atomically, by rename) before the token expires.
    let next = temp_file("projected-next");
    std::fs::write(&next, "second.projected.token").unwrap();
    std::fs::rename(&next, &path).unwrap();
    provider.invalidate(&token);
    provider.token().await.unwrap();
    assert_eq!(
        emulator.subject_tokens(),
        ["first.projected.token", "second.projected.token"]
    );
    assert_eq!(emulator.stats().token_exchanges, 2);
    std::fs::remove_file(&path).ok();
}

#[tokio::test]
async fn an_empty_or_missing_subject_file_is_a_transient_error_naming_it() {
    let emulator = Emulator::start().await.unwrap();
    let path = temp_file("missing");
    let source = TokenExchange::new(emulator.token_url(), SubjectTokenFile::new(&path));
    let error = source.fetch_token().await.unwrap_err();
    assert!(
        matches!(&error, Error::SubjectToken { from, transient: true, .. } if from.contains("missing")),
        "{error:?}"
    );
    std::fs::write(&path, "  \n").unwrap();
    let error = source.fetch_token().await.unwrap_err();
    assert!(error.to_string().contains("empty"), "{error}");
    assert_eq!(emulator.stats().token_requests, 0);
    std::fs::remove_file(&path).ok();
}

/// A local server that plays GitHub Actions' OIDC token service: it checks the bearer and
/// answers `{"value": <a token naming the audience>}`.
async fn actions_service(request_token: &'static str) -> (common::Served, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let served = serve(move |request: Received| {
        let bearer = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if bearer != format!("Bearer {request_token}") {
            return json_response(401, &json!({"message": "bad bearer"}), &[]);
        }
        let query = request.uri.query().unwrap_or_default().to_owned();
        log.lock().unwrap().push(query.clone());
        let audience = query
            .split('&')
            .find_map(|p| p.strip_prefix("audience="))
            .unwrap_or("none")
            .replace("%3A", ":")
            .replace("%2F", "/");
        let count = log.lock().unwrap().len();
        json_response(
            200,
            &json!({"count": 1, "value": format!("gha.{}.{count}", audience.replace([':', '/'], "_"))}),
            &[],
        )
    })
    .await;
    (served, seen)
}

#[tokio::test]
async fn the_github_actions_token_is_fetched_for_its_audience_at_every_exchange() {
    let emulator = Emulator::start().await.unwrap();
    let (service, queries) = actions_service("runner-request-token").await;
    let subject = GitHubActionsToken::new(
        service.url("/token?api-version=2.0"),
        "runner-request-token",
    )
    .audience("api://AzureADTokenExchange");
    let source = TokenExchange::new(emulator.token_url(), subject);
    source.fetch_token().await.unwrap();
    source.fetch_token().await.unwrap();
    assert_eq!(
        emulator.subject_tokens(),
        [
            "gha.api___AzureADTokenExchange.1",
            "gha.api___AzureADTokenExchange.2"
        ]
    );
    let queries = queries.lock().unwrap().clone();
    assert_eq!(queries.len(), 2);
    assert!(
        queries[0].starts_with("api-version=2.0&audience=api%3A%2F%2FAzureADTokenExchange"),
        "{queries:?}"
    );
}

#[tokio::test]
async fn a_refused_actions_bearer_is_a_subject_token_error_without_the_bearer() {
    let (service, _) = actions_service("the-right-one").await;
    let subject = GitHubActionsToken::new(service.url("/token?api-version=2.0"), "a-wrong-bearer");
    let error = subject.subject_token().await.unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(
        matches!(&error, Error::SubjectToken { from, .. } if from == "GitHub Actions"),
        "{text}"
    );
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains("a-wrong-bearer"), "{text}");
}

#[tokio::test]
async fn the_form_carries_rfc_8693_parameters_and_an_issued_n_a_token_is_kept() {
    let forms = Arc::new(Mutex::new(Vec::new()));
    let log = forms.clone();
    let server = serve(move |request: Received| {
        log.lock().unwrap().push(request.body.clone());
        json_response(
            200,
            &json!({
                "access_token": "eyJ.issued.id-token",
                "issued_token_type": token_types::ID_TOKEN,
                "token_type": "N_A",
                "expires_in": 600
            }),
            &[],
        )
    })
    .await;
    let source = TokenExchange::new(server.url("/token"), || async {
        Ok("subject.from.a.closure".to_owned())
    })
    .subject_token_type(token_types::ACCESS_TOKEN)
    .actor_token(|| async { Ok("actor.token".to_owned()) }, token_types::JWT)
    .requested_token_type(token_types::ID_TOKEN)
    .audience("aud-1")
    .audience("aud-2")
    .resource("https://rs.example.com/")
    .scope("read write")
    .client(OAuthClient::public("my-cli"));
    let token = source.fetch_token().await.unwrap();
    assert_eq!(token.issued_token_type(), Some(token_types::ID_TOKEN));
    assert_eq!(token.lifetime(), std::time::Duration::from_secs(600));
    let body = forms.lock().unwrap()[0].clone();
    let value = |name| form_value(&body, name);
    assert_eq!(
        value("grant_type").as_deref(),
        Some(TokenExchange::GRANT_TYPE)
    );
    assert_eq!(
        value("subject_token").as_deref(),
        Some("subject.from.a.closure")
    );
    assert_eq!(
        value("subject_token_type").as_deref(),
        Some(token_types::ACCESS_TOKEN)
    );
    assert_eq!(value("actor_token").as_deref(), Some("actor.token"));
    assert_eq!(value("actor_token_type").as_deref(), Some(token_types::JWT));
    assert_eq!(
        value("requested_token_type").as_deref(),
        Some(token_types::ID_TOKEN)
    );
    assert_eq!(
        value("resource").as_deref(),
        Some("https://rs.example.com/")
    );
    assert_eq!(value("scope").as_deref(), Some("read write"));
    assert_eq!(value("client_id").as_deref(), Some("my-cli"));
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("audience=").count(), 2, "{text}");
}

#[tokio::test]
async fn n_a_is_refused_outside_a_token_exchange() {
    let server =
        serve(|_| json_response(200, &json!({"access_token": "x", "token_type": "N_A"}), &[]))
            .await;
    let source = token_refresh::ClientCredentials::new(server.url("/token"), "id", "secret");
    let error = source.fetch_token().await.unwrap_err();
    assert!(matches!(error, Error::UnsupportedTokenType(_)), "{error:?}");
}
