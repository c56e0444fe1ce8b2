//! AKS workload identity as a token source, against the emulator's Entra token endpoint
//! (which verifies the federated assertion): the token file re-read at every token
//! request — the regression test for Azure SDK for Rust #1739 — and what a missing,
//! empty or expired token gets.
#![cfg(all(feature = "azure", feature = "reqwest", feature = "tower"))]

mod common;

use std::path::Path;
use std::time::Duration;

use common::cloud::{self, TempDir};
use token_refresh::azure::WorkloadIdentity;
use token_refresh::{Error, TokenProvider, TokenSource};
use token_refresh_emulator::{AZURE_FEDERATION_AUDIENCE, Emulator, FEDERATED_SUBJECT};

const SCOPE: &str = "https://storage.azure.com/.default";

fn workload(emulator: &Emulator, file: &Path) -> WorkloadIdentity {
    WorkloadIdentity::new(emulator.azure_tenant_id(), emulator.azure_client_id(), file)
        .authority_host(emulator.authority_host())
        .scope(SCOPE)
}

async fn federated(emulator: &Emulator, lifetime: Duration) -> String {
    emulator
        .federated_token(FEDERATED_SUBJECT, AZURE_FEDERATION_AUDIENCE, lifetime)
        .await
}

/// Writes `content` to `path` as the kubelet does: a new file renamed over the old one.
fn project(path: &Path, content: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, content).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test]
async fn the_token_file_replaced_on_disk_is_read_again_for_the_next_token_request() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("aks");
    let file = dir.path().join("azure-identity-token");
    let first = federated(&emulator, Duration::from_secs(3600)).await;
    project(&file, &first);
    let provider = TokenProvider::new(workload(&emulator, &file));
    let token = provider.token().await.unwrap();

    let second = federated(&emulator, Duration::from_secs(3600)).await;
    project(&file, &format!("{second}\n"));
    provider.invalidate(&token);
    provider.token().await.unwrap();

    assert_eq!(
        emulator.federated_assertions(),
        [first, second],
        "both contents were sent, in order"
    );
    assert_eq!(emulator.cloud_stats().entra_tokens, 2);
}

#[tokio::test]
async fn tokens_work_through_both_integrations_and_are_replaced_before_they_expire() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("aks");
    let file = dir.path().join("token");
    project(
        &file,
        &federated(&emulator, Duration::from_secs(3600)).await,
    );
    let provider = TokenProvider::new(workload(&emulator, &file));
    cloud::through_both_integrations(&emulator, &provider).await;
    let fresh = TokenProvider::new(workload(&emulator, &file));
    cloud::refreshed_before_expiry(&emulator, fresh, |e| e.cloud_stats().entra_tokens - 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_callers_make_one_request_to_entra() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("aks");
    let file = dir.path().join("token");
    project(
        &file,
        &federated(&emulator, Duration::from_secs(3600)).await,
    );
    cloud::cold_herd(&TokenProvider::new(workload(&emulator, &file)), 1000).await;
    assert_eq!(emulator.cloud_stats().entra_tokens, 1);
}

#[tokio::test]
async fn a_missing_or_empty_token_file_is_an_error_naming_it_and_nothing_is_sent() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("aks");
    let file = dir.path().join("not-yet-projected");
    let source = workload(&emulator, &file);
    let error = source.fetch_token().await.unwrap_err();
    assert!(
        matches!(&error, Error::SubjectToken { from, transient: true, .. }
            if from.contains("not-yet-projected")),
        "{error:?}"
    );
    project(&file, " \n");
    let error = source.fetch_token().await.unwrap_err();
    assert!(error.to_string().contains("empty"), "{error}");
    assert!(error.to_string().contains("not-yet-projected"), "{error}");
    assert_eq!(emulator.cloud_stats().entra_tokens, 0);
}

#[tokio::test]
async fn an_expired_assertion_gets_entras_aadsts700024_without_the_assertion_in_the_error() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("aks");
    let file = dir.path().join("token");
    let expired = federated(&emulator, Duration::ZERO).await;
    project(&file, &expired);
    let error = workload(&emulator, &file).fetch_token().await.unwrap_err();
    assert_eq!(error.oauth_error(), Some("invalid_client"));
    let text = format!("{error} {error:?}");
    assert!(text.contains("AADSTS700024"), "{text}");
    let signature = expired.rsplit('.').next().unwrap();
    assert!(!text.contains(signature), "{text}");

    // A token for another subject is not trusted either.
    let stranger = emulator
        .federated_token(
            "system:serviceaccount:other:app",
            AZURE_FEDERATION_AUDIENCE,
            Duration::from_secs(600),
        )
        .await;
    project(&file, &stranger);
    let error = workload(&emulator, &file).fetch_token().await.unwrap_err();
    assert!(error.to_string().contains("AADSTS70021"), "{error}");
}

#[tokio::test]
async fn a_fleet_store_shares_one_token_and_a_revocation_costs_one_refresh() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("aks");
    let file = dir.path().join("token");
    project(
        &file,
        &federated(&emulator, Duration::from_secs(3600)).await,
    );
    cloud::shared_through_a_store(
        || workload(&emulator, &file),
        &emulator,
        |e| e.cloud_stats().entra_tokens,
    )
    .await;
    cloud::revocation_costs_one_refresh(
        &emulator,
        TokenProvider::new(workload(&emulator, &file)),
        |e| e.cloud_stats().entra_tokens,
    )
    .await;
    let key = |w: WorkloadIdentity| w.store_key().unwrap();
    let base = key(workload(&emulator, &file));
    assert!(base.starts_with("azure-workload-"), "{base}");
    assert_ne!(
        base,
        key(workload(&emulator, &file).scope("https://vault.azure.net"))
    );
    assert_eq!(
        key(workload(&emulator, &file).scope("https://storage.azure.com")),
        base,
        "a resource is its /.default scope"
    );
}

#[tokio::test]
async fn without_the_webhooks_variables_every_missing_one_is_named() {
    // This test process has none of AKS's variables.
    let error = WorkloadIdentity::from_env(SCOPE).unwrap_err();
    assert!(
        matches!(&error, Error::MissingEnvVars { names } if names
            == &["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"]),
        "{error:?}"
    );
}
