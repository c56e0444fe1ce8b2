//! Application Default Credentials from a file, of each of the four types, against the
//! emulator; what an unusable file gets. How the chain finds the file (the variable, the
//! well-known path, the metadata server) is in `cloud_env.rs`, in child processes.
#![cfg(all(feature = "gcp", feature = "reqwest", feature = "tower"))]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::cloud::{self, TempDir};
use serde_json::{Value, json};
use token_refresh::gcp::ApplicationDefaultCredentials;
use token_refresh::{Error, TokenProvider, TokenSource};
use token_refresh_emulator::{Emulator, FEDERATED_SUBJECT};

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

fn file(dir: &TempDir, name: &str, content: &Value) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, content.to_string()).unwrap();
    path
}

fn adc(path: &PathBuf) -> ApplicationDefaultCredentials {
    ApplicationDefaultCredentials::from_file(path, [SCOPE]).unwrap()
}

fn impersonated(emulator: &Emulator, source: Value) -> Value {
    json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url":
            emulator.impersonation_url("target@emulator.iam.gserviceaccount.com"),
        "source_credentials": source,
        "delegates": ["middle@emulator.iam.gserviceaccount.com"],
    })
}

#[tokio::test]
async fn each_file_type_gets_a_token_that_works_through_both_integrations() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("adc");
    let subject = dir.path().join("subject");
    let audience = emulator.workload_identity_audience();
    std::fs::write(
        &subject,
        emulator
            .federated_token(FEDERATED_SUBJECT, &audience, Duration::from_secs(3600))
            .await,
    )
    .unwrap();
    let files = [
        ("service_account", emulator.google_key_file()),
        ("authorized_user", emulator.authorized_user_file()),
        (
            "external_account",
            emulator.external_account_file(json!({"file": subject})),
        ),
        (
            "impersonated_service_account",
            impersonated(&emulator, emulator.authorized_user_file()),
        ),
    ];
    for (kind, content) in files {
        let path = file(&dir, &format!("{kind}.json"), &content);
        let source = adc(&path);
        assert_eq!(source.kind(), kind);
        assert_eq!(source.path(), Some(path.as_path()));
        assert!(source.store_key().is_some(), "{kind} has a store key");
        cloud::through_both_integrations(&emulator, &TokenProvider::new(source)).await;
    }
    let (stats, cloud) = (emulator.stats(), emulator.cloud_stats());
    assert_eq!(
        stats.refresh_token_grants, 2,
        "authorized_user, and the impersonator"
    );
    assert_eq!(cloud.google_sts_exchanges, 1);
    assert_eq!(cloud.google_iam_tokens, 1);
    assert_eq!(
        emulator.impersonations(),
        [(
            "target@emulator.iam.gserviceaccount.com".to_owned(),
            "3600s".to_owned()
        )]
    );
}

#[tokio::test]
async fn a_service_account_key_inside_an_impersonation_file_signs_for_the_source() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("adc");
    let path = file(
        &dir,
        "impersonated.json",
        &impersonated(&emulator, emulator.google_key_file()),
    );
    let token = adc(&path).fetch_token().await.unwrap();
    assert!(!token.expose_secret().is_empty());
    assert_eq!(emulator.cloud_stats().google_iam_tokens, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_callers_spend_the_users_refresh_token_once() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("adc");
    let path = file(&dir, "user.json", &emulator.authorized_user_file());
    cloud::cold_herd(&TokenProvider::new(adc(&path)), 1000).await;
    assert_eq!(emulator.stats().refresh_token_grants, 1);
}

#[tokio::test]
async fn adc_tokens_share_a_fleet_store_and_a_revocation_costs_one_refresh() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("adc");
    let path = file(
        &dir,
        "impersonated.json",
        &impersonated(&emulator, emulator.google_key_file()),
    );
    cloud::shared_through_a_store(
        || adc(&path),
        &emulator,
        |e| e.cloud_stats().google_iam_tokens,
    )
    .await;
    cloud::revocation_costs_one_refresh(&emulator, TokenProvider::new(adc(&path)), |e| {
        e.cloud_stats().google_iam_tokens
    })
    .await;
}

#[tokio::test]
async fn short_lived_impersonated_tokens_are_replaced_before_they_expire() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("adc");
    let path = file(
        &dir,
        "impersonated.json",
        &impersonated(&emulator, emulator.google_key_file()),
    );
    cloud::refreshed_before_expiry(&emulator, TokenProvider::new(adc(&path)), |e| {
        e.cloud_stats().google_iam_tokens
    })
    .await;
}

#[tokio::test]
async fn an_unusable_file_is_an_error_naming_it_and_the_field() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("adc");
    let cases = [
        (
            json!({"type": "gdch_service_account"}),
            "field type \"gdch_service_account\"",
        ),
        (json!({"client_id": "x"}), "field type is missing"),
        (
            json!({"type": "authorized_user", "client_id": "c", "client_secret": "s"}),
            "field refresh_token is missing",
        ),
        (
            impersonated(
                &emulator,
                impersonated(&emulator, emulator.authorized_user_file()),
            ),
            "delegates",
        ),
        (
            impersonated(&emulator, json!({"type": "service_account"})),
            "source_credentials: field client_email",
        ),
    ];
    for (content, expected) in cases {
        let path = file(&dir, "bad.json", &content);
        let error = ApplicationDefaultCredentials::from_file(&path, [SCOPE]).unwrap_err();
        assert!(
            matches!(&error, Error::CredentialsFile { path: p, problem }
                if p == &path && problem.contains(expected)),
            "{expected}: {error:?}"
        );
    }
    let error =
        ApplicationDefaultCredentials::from_file("/nonexistent/adc.json", [SCOPE]).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/adc.json"),
        "{error}"
    );
}

#[tokio::test]
async fn secrets_in_the_file_never_show_in_debug() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("adc");
    let user = emulator.authorized_user_file();
    let path = file(&dir, "user.json", &user);
    let debug = format!("{:?}", adc(&path));
    for secret in ["client_secret", "refresh_token"] {
        let value = user[secret].as_str().unwrap();
        assert!(!debug.contains(value), "{secret} in {debug}");
    }
    assert!(debug.contains("authorized_user"), "{debug}");
}
