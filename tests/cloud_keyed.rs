//! Cloud sources under a keyed provider: one identity, a token per audience. Azure managed
//! identity keyed by resource, Azure workload identity by scope, the GCP metadata server
//! by scopes, and its ID tokens by audience; each key asks its endpoint once, and
//! parameters a source cannot send are refused before anything is sent.
#![cfg(all(
    feature = "gcp",
    feature = "azure",
    feature = "reqwest",
    feature = "tower"
))]

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::cloud::TempDir;
use token_refresh::azure::{AppService, Imds, ManagedIdentity, WorkloadIdentity};
use token_refresh::gcp::MetadataServer;
use token_refresh::{Error, TokenParams, TokenProvider};
use token_refresh_emulator::{AZURE_FEDERATION_AUDIENCE, Emulator, FEDERATED_SUBJECT};

/// `calls` calls spread over `params`, in turn.
async fn call_round_robin(
    keyed: &token_refresh::KeyedTokenProvider,
    params: &[TokenParams],
    calls: usize,
) {
    for n in 0..calls {
        keyed.token_for(&params[n % params.len()]).await.unwrap();
    }
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

fn refused_as_config(result: Result<token_refresh::AccessToken, Error>, names: &str) {
    match result {
        Err(Error::Config(text)) => assert!(text.contains(names), "{text}"),
        other => panic!("not a configuration error: {other:?}"),
    }
}

#[tokio::test]
async fn a_managed_identity_keyed_by_resource_asks_imds_once_per_resource() {
    let emulator = Emulator::start().await.unwrap();
    let keyed = TokenProvider::keyed(ManagedIdentity::from(
        Imds::new("https://management.azure.com").endpoint(emulator.imds_endpoint()),
    ));
    let params = [
        TokenParams::new(),
        TokenParams::resource("https://vault.azure.net"),
        TokenParams::scope("https://storage.azure.com/.default"),
    ];
    call_round_robin(&keyed, &params, 300).await;
    assert_eq!(emulator.cloud_stats().azure_imds_tokens, 3);
    assert_eq!(
        sorted(emulator.managed_identity_resources()),
        [
            "https://management.azure.com",
            "https://storage.azure.com",
            "https://vault.azure.net"
        ]
    );
    refused_as_config(
        keyed.token_for(&TokenParams::audience("api://x")).await,
        "not an audience",
    );
    refused_as_config(
        keyed
            .token_for(
                &TokenParams::resource("https://vault.azure.net")
                    .with_resource("https://storage.azure.com"),
            )
            .await,
        "one resource at a time",
    );
    assert_eq!(emulator.cloud_stats().azure_imds_tokens, 3, "nothing sent");
}

#[tokio::test]
async fn the_app_service_identity_endpoint_keyed_by_resource_asks_once_per_resource() {
    let emulator = Emulator::start().await.unwrap();
    let keyed = TokenProvider::keyed(AppService::new(
        emulator.app_service_endpoint(),
        emulator.app_service_secret(),
        "https://vault.azure.net",
    ));
    let params = [
        TokenParams::new(),
        TokenParams::resource("https://storage.azure.com"),
    ];
    call_round_robin(&keyed, &params, 100).await;
    assert_eq!(emulator.cloud_stats().azure_app_service_tokens, 2);
    assert_eq!(
        sorted(emulator.managed_identity_resources()),
        ["https://storage.azure.com", "https://vault.azure.net"]
    );
}

#[tokio::test]
async fn workload_identity_keyed_by_scope_or_resource_asks_entra_once_per_scope() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("aks-keyed");
    let file = dir.path().join("azure-identity-token");
    let assertion = emulator
        .federated_token(
            FEDERATED_SUBJECT,
            AZURE_FEDERATION_AUDIENCE,
            Duration::from_secs(3600),
        )
        .await;
    std::fs::write(&file, assertion).unwrap();
    let keyed = TokenProvider::keyed(
        WorkloadIdentity::new(
            emulator.azure_tenant_id(),
            emulator.azure_client_id(),
            &file,
        )
        .authority_host(emulator.authority_host())
        .scope("https://management.azure.com/.default"),
    );
    let params = [
        TokenParams::new(),
        TokenParams::resource("https://vault.azure.net"),
        TokenParams::scope("https://graph.microsoft.com"),
    ];
    call_round_robin(&keyed, &params, 300).await;
    assert_eq!(emulator.cloud_stats().entra_tokens, 3);
    assert_eq!(
        sorted(emulator.entra_scopes()),
        [
            "https://graph.microsoft.com/.default",
            "https://management.azure.com/.default",
            "https://vault.azure.net/.default"
        ]
    );
    refused_as_config(
        keyed.token_for(&TokenParams::audience("api://x")).await,
        "not an audience",
    );
    assert_eq!(emulator.cloud_stats().entra_tokens, 3, "nothing sent");
}

#[tokio::test]
async fn the_metadata_server_keyed_by_scopes_asks_once_per_scope_set() {
    let emulator = Emulator::start().await.unwrap();
    let keyed = TokenProvider::keyed(MetadataServer::new().endpoint(emulator.origin()));
    let params = [
        TokenParams::new(),
        TokenParams::scope("https://www.googleapis.com/auth/devstorage.read_only"),
        TokenParams::scope(
            "https://www.googleapis.com/auth/pubsub https://www.googleapis.com/auth/datastore",
        ),
    ];
    call_round_robin(&keyed, &params, 300).await;
    assert_eq!(emulator.cloud_stats().gcp_metadata_tokens, 3);
    assert_eq!(
        sorted(emulator.metadata_scopes()),
        [
            None,
            // A scope set is sent sorted: the same set is the same key.
            Some(
                "https://www.googleapis.com/auth/datastore,https://www.googleapis.com/auth/pubsub"
                    .to_owned()
            ),
            Some("https://www.googleapis.com/auth/devstorage.read_only".to_owned()),
        ]
    );
    refused_as_config(
        keyed
            .token_for(&TokenParams::audience("https://svc.example.com"))
            .await,
        "id_token",
    );
    assert_eq!(
        emulator.cloud_stats().gcp_metadata_tokens,
        3,
        "nothing sent"
    );
}

#[tokio::test]
async fn metadata_id_tokens_keyed_by_audience_carry_the_audience_asked_for() {
    let emulator = Emulator::start().await.unwrap();
    let keyed = TokenProvider::keyed(
        MetadataServer::new()
            .endpoint(emulator.origin())
            .id_token("https://a-abc-uc.a.run.app"),
    );
    let params = [
        TokenParams::new(),
        TokenParams::audience("https://b-abc-uc.a.run.app"),
    ];
    call_round_robin(&keyed, &params, 100).await;
    assert_eq!(emulator.cloud_stats().gcp_metadata_id_tokens, 2);
    for (params, audience) in params
        .iter()
        .zip(["https://a-abc-uc.a.run.app", "https://b-abc-uc.a.run.app"])
    {
        let token = keyed.token_for(params).await.unwrap();
        let payload = token.expose_secret().split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], audience);
    }
    refused_as_config(
        keyed.token_for(&TokenParams::scope("openid")).await,
        "audience only",
    );
}

#[tokio::test]
async fn application_default_credentials_keyed_by_scope_ask_once_per_scope() {
    let emulator = Emulator::start().await.unwrap();
    let dir = TempDir::new("adc-keyed");
    let path = dir.path().join("key.json");
    std::fs::write(&path, emulator.google_key_file().to_string()).unwrap();
    let keyed = TokenProvider::keyed(
        token_refresh::gcp::ApplicationDefaultCredentials::from_file(
            &path,
            ["https://www.googleapis.com/auth/cloud-platform"],
        )
        .unwrap(),
    );
    let params = [
        TokenParams::new(),
        TokenParams::scope("https://www.googleapis.com/auth/pubsub"),
    ];
    call_round_robin(&keyed, &params, 100).await;
    assert_eq!(emulator.stats().token_requests, 2);
    let tokens: Vec<String> = {
        let mut tokens = Vec::new();
        for params in &params {
            tokens.push(
                keyed
                    .token_for(params)
                    .await
                    .unwrap()
                    .expose_secret()
                    .to_owned(),
            );
        }
        tokens
    };
    assert_ne!(tokens[0], tokens[1], "a token per scope set");
}
