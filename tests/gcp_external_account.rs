//! Google workload identity federation (`external_account`): subject tokens from a file
//! (re-read at every exchange: the #1739 regression test for Google), a URL or JSON,
//! Google STS's form, service-account impersonation, and what a bad file gets. The
//! executable source, which needs an environment variable, is in `cloud_env.rs`.
#![cfg(all(feature = "gcp", feature = "reqwest", feature = "tower"))]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cloud::{self, TempDir};
use common::{Received, form_value, json_response, serve};
use serde_json::{Value, json};
use token_refresh::gcp::ExternalAccount;
use token_refresh::{Error, TokenProvider, TokenSource};
use token_refresh_emulator::{Emulator, FEDERATED_SUBJECT};

async fn federated(emulator: &Emulator) -> String {
    let audience = emulator.workload_identity_audience();
    emulator
        .federated_token(FEDERATED_SUBJECT, &audience, Duration::from_secs(3600))
        .await
}

/// Writes `content` as the kubelet does: a new file renamed over the old one.
fn project(path: &Path, content: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, content).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// Writes the credentials file `config` into `dir`.
fn config_file(dir: &TempDir, config: &Value) -> PathBuf {
    let path = dir.path().join("credentials.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// An external account reading its subject token from a file in `dir`, written now.
async fn file_account(emulator: &Emulator, dir: &TempDir) -> (ExternalAccount, PathBuf) {
    let token = dir.path().join("token");
    project(&token, &federated(emulator).await);
    let config = emulator.external_account_file(json!({"file": token}));
    let source = ExternalAccount::from_file(config_file(dir, &config)).unwrap();
    (source, token)
}

#[tokio::test]
async fn the_subject_file_replaced_on_disk_is_read_again_for_the_next_exchange() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("wif");
    let (source, token_file) = file_account(&emulator, &dir).await;
    let first = std::fs::read_to_string(&token_file).unwrap();
    let provider = TokenProvider::new(source);
    let token = provider.token().await.unwrap();

    let second = federated(&emulator).await;
    project(&token_file, &format!("{second}\n"));
    provider.invalidate(&token);
    provider.token().await.unwrap();

    assert_eq!(
        emulator.subject_tokens(),
        [first, second],
        "both contents were sent, in order"
    );
    assert_eq!(emulator.cloud_stats().google_sts_exchanges, 2);
}

#[tokio::test]
async fn tokens_work_through_both_integrations_and_are_replaced_before_they_expire() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("wif");
    let (source, _) = file_account(&emulator, &dir).await;
    let provider = TokenProvider::new(source.clone());
    cloud::through_both_integrations(&emulator, &provider).await;
    cloud::refreshed_before_expiry(&emulator, TokenProvider::new(source), |e| {
        e.cloud_stats().google_sts_exchanges - 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_callers_make_one_exchange() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("wif");
    let (source, _) = file_account(&emulator, &dir).await;
    cloud::cold_herd(&TokenProvider::new(source), 1000).await;
    assert_eq!(emulator.cloud_stats().google_sts_exchanges, 1);
    assert_eq!(emulator.subject_tokens().len(), 1);
}

#[tokio::test]
async fn sts_gets_googles_token_exchange_form() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("wif");
    let forms = Arc::new(Mutex::new(Vec::new()));
    let seen = forms.clone();
    let sts = serve(move |request: Received| {
        seen.lock().unwrap().push(request.body.clone());
        json_response(
            200,
            &json!({"access_token": "sts-token", "issued_token_type":
                "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer",
                "expires_in": 3600}),
            &[],
        )
    })
    .await;
    let token = dir.path().join("token");
    let subject = federated(&emulator).await;
    project(&token, &subject);
    let mut config = emulator.external_account_file(json!({"file": token}));
    config["token_url"] = sts.url("/v1/token").into();
    config["scopes"] = json!(["https://www.googleapis.com/auth/devstorage.read_only"]);
    let source = ExternalAccount::from_file(config_file(&dir, &config)).unwrap();
    assert_eq!(
        source.fetch_token().await.unwrap().expose_secret(),
        "sts-token"
    );
    let forms = forms.lock().unwrap();
    let form = &forms[0];
    let value = |name| form_value(form, name);
    assert_eq!(
        value("grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(
        value("audience"),
        Some(emulator.workload_identity_audience())
    );
    assert_eq!(
        value("scope").as_deref(),
        Some("https://www.googleapis.com/auth/devstorage.read_only")
    );
    assert_eq!(
        value("requested_token_type").as_deref(),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(
        value("subject_token_type").as_deref(),
        Some("urn:ietf:params:oauth:token-type:jwt")
    );
    assert_eq!(value("subject_token"), Some(subject));
}

#[tokio::test]
async fn a_json_file_and_a_url_give_the_subject_token_of_their_field() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("wif");
    let subject = federated(&emulator).await;
    let json_file = dir.path().join("token.json");
    std::fs::write(
        &json_file,
        json!({"id_token": subject, "other": 1}).to_string(),
    )
    .unwrap();
    let config = emulator.external_account_file(json!({
        "file": json_file,
        "format": {"type": "json", "subject_token_field_name": "id_token"},
    }));
    ExternalAccount::from_json(&config)
        .unwrap()
        .fetch_token()
        .await
        .unwrap();

    // A URL source (Azure's IMDS, a CI's token service) with headers, JSON and text.
    let token = subject.clone();
    let service = serve(move |request: Received| {
        let authorized = request
            .headers
            .get("x-api-key")
            .is_some_and(|v| v == "k3y-for-the-url");
        match (authorized, request.uri.path()) {
            (false, _) => json_response(401, &json!({"message": "no key"}), &[]),
            (true, "/json") => json_response(200, &json!({"value": token}), &[]),
            (true, _) => http::Response::new(format!("{token}\n")),
        }
    })
    .await;
    for (path, format) in [
        (
            "/json",
            json!({"type": "json", "subject_token_field_name": "value"}),
        ),
        ("/text", json!({"type": "text"})),
    ] {
        let config = emulator.external_account_file(json!({
            "url": service.url(path),
            "headers": {"X-Api-Key": "k3y-for-the-url"},
            "format": format,
        }));
        ExternalAccount::from_json(&config)
            .unwrap()
            .fetch_token()
            .await
            .unwrap();
    }
    assert_eq!(emulator.subject_tokens(), vec![subject.clone(); 3]);

    // Without the header the URL refuses, and the error names the URL, not the key.
    let config = emulator.external_account_file(json!({"url": service.url("/text?secret=q")}));
    let error = ExternalAccount::from_json(&config)
        .unwrap()
        .fetch_token()
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(&error, Error::SubjectToken { from, .. } if from.ends_with("/text")),
        "{error:?}"
    );
    assert!(
        text.contains("HTTP 401") && !text.contains("secret=q"),
        "{text}"
    );
}

#[tokio::test]
async fn a_field_missing_from_the_json_is_named_and_the_content_never_shown() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("wif");
    let json_file = dir.path().join("token.json");
    std::fs::write(&json_file, r#"{"access_token": "s3cr3t-subject-value"}"#).unwrap();
    let config = emulator.external_account_file(json!({
        "file": json_file,
        "format": {"type": "json", "subject_token_field_name": "id_token"},
    }));
    let error = ExternalAccount::from_json(&config)
        .unwrap()
        .fetch_token()
        .await
        .unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(text.contains("\"id_token\""), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert_eq!(emulator.cloud_stats().google_sts_exchanges, 0);
}

#[tokio::test]
async fn impersonation_exchanges_the_sts_token_for_the_accounts_with_its_lifetime() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("wif");
    let token = dir.path().join("token");
    project(&token, &federated(&emulator).await);
    let email = "deployer@my-project.iam.gserviceaccount.com";
    let mut config = emulator.external_account_file(json!({"file": token}));
    config["service_account_impersonation_url"] = emulator.impersonation_url(email).into();
    config["service_account_impersonation"] = json!({"token_lifetime_seconds": 1200});
    let source = ExternalAccount::from_file(config_file(&dir, &config)).unwrap();
    assert_eq!(source.service_account(), Some(email));
    let provider = TokenProvider::new(source);
    let token = provider.token().await.unwrap();
    let lifetime = token.lifetime().as_secs();
    assert!((1198..=1200).contains(&lifetime), "{lifetime}");
    cloud::through_both_integrations(&emulator, &provider).await;
    let stats = emulator.cloud_stats();
    assert_eq!(
        (stats.google_sts_exchanges, stats.google_iam_tokens),
        (1, 1)
    );
    assert_eq!(
        emulator.impersonations(),
        [(email.to_owned(), "1200s".to_owned())]
    );
}

#[tokio::test]
async fn an_unknown_or_aws_credential_source_is_refused_naming_the_field() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("wif");
    let config = emulator.external_account_file(json!({"certificate": {"path": "/x"}}));
    let path = config_file(&dir, &config);
    let error = ExternalAccount::from_file(&path).unwrap_err();
    assert!(
        matches!(&error, Error::CredentialsFile { path: p, problem }
            if p == &path && problem.contains("credential_source") && problem.contains("certificate")),
        "{error:?}"
    );
    let config = emulator.external_account_file(json!({"environment_id": "aws1"}));
    let error = ExternalAccount::from_json(&config).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("environment_id") && text.contains("not supported"),
        "{text}"
    );
    let mut config = emulator.external_account_file(json!({"file": "/t"}));
    config.as_object_mut().unwrap().remove("audience");
    assert!(
        ExternalAccount::from_json(&config)
            .unwrap_err()
            .to_string()
            .contains("field audience")
    );
    let config = emulator.external_account_file(json!({
        "executable": {"command": "/bin/true", "timeout_millis": 10}
    }));
    assert!(
        ExternalAccount::from_json(&config)
            .unwrap_err()
            .to_string()
            .contains("timeout_millis")
    );
}

#[tokio::test]
async fn executables_need_the_variable_that_allows_them() {
    // This test process does not set GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES.
    let emulator = Emulator::start().await.unwrap();
    let config = emulator.external_account_file(json!({
        "executable": {"command": "/bin/echo never-run", "timeout_millis": 5000}
    }));
    let error = ExternalAccount::from_json(&config)
        .unwrap()
        .fetch_token()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::SubjectToken { from, problem, transient: false }
            if from == "executable /bin/echo"
                && problem.contains("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_missing_subject_file_or_an_expired_token_is_an_error_naming_its_cause() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("wif");
    let missing = dir.path().join("never-projected");
    let config = emulator.external_account_file(json!({"file": missing}));
    let error = ExternalAccount::from_json(&config)
        .unwrap()
        .fetch_token()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::SubjectToken { from, transient: true, .. }
            if from.contains("never-projected")),
        "{error:?}"
    );
    assert_eq!(emulator.cloud_stats().google_sts_exchanges, 0);

    let expired = emulator
        .federated_token(FEDERATED_SUBJECT, "aud", Duration::ZERO)
        .await;
    project(&missing, &expired);
    let error = ExternalAccount::from_json(&config)
        .unwrap()
        .fetch_token()
        .await
        .unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_grant"));
    let text = format!("{error} {error:?}");
    assert!(
        !text.contains(expired.rsplit('.').next().unwrap()),
        "{text}"
    );
}

#[tokio::test]
async fn a_fleet_store_shares_one_token_and_a_revocation_costs_one_refresh() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("wif");
    let (source, _) = file_account(&emulator, &dir).await;
    cloud::shared_through_a_store(
        || source.clone(),
        &emulator,
        |e| e.cloud_stats().google_sts_exchanges,
    )
    .await;
    cloud::revocation_costs_one_refresh(&emulator, TokenProvider::new(source.clone()), |e| {
        e.cloud_stats().google_sts_exchanges
    })
    .await;
    assert!(
        source
            .store_key()
            .unwrap()
            .starts_with("gcp-external-account-")
    );
    assert_ne!(
        source.store_key(),
        source.clone().scope("https://x").store_key()
    );
}

#[tokio::test]
async fn the_clients_secret_and_the_urls_headers_never_show_in_debug() {
    let emulator = Emulator::start().await.unwrap();
    let mut config = emulator.external_account_file(json!({
        "url": "https://token.example.com/oidc",
        "headers": {"Authorization": "Bearer url-h34der-secret"},
    }));
    config["client_id"] = "workforce-client".into();
    config["client_secret"] = "cl13nt-s3cret-value".into();
    let source = ExternalAccount::from_json(&config).unwrap();
    let debug = format!("{source:?}");
    assert!(
        debug.contains("url https://token.example.com/oidc"),
        "{debug}"
    );
    for secret in ["url-h34der-secret", "cl13nt-s3cret-value"] {
        assert!(!debug.contains(secret), "{debug}");
    }
}
