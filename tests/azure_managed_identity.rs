//! Azure managed identity as a token source: IMDS and the App Service identity endpoint,
//! both played by the emulator (never the real address), with expiries as Unix
//! timestamps, user-assigned identities and the errors of a misconfigured platform.
#![cfg(all(feature = "azure", feature = "reqwest", feature = "tower"))]

mod common;

use common::cloud;
use token_refresh::azure::{AppService, Imds, ManagedIdentity, UserAssignedId};
use token_refresh::{Error, TokenProvider, TokenSource};
use token_refresh_emulator::{Emulator, ExpiresOn};

fn imds(emulator: &Emulator) -> Imds {
    Imds::new("https://management.azure.com/.default").endpoint(emulator.imds_endpoint())
}

fn app_service(emulator: &Emulator) -> AppService {
    AppService::new(
        emulator.app_service_endpoint(),
        emulator.app_service_secret(),
        "https://vault.azure.net",
    )
}

#[tokio::test]
async fn imds_tokens_work_through_both_integrations() {
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(ManagedIdentity::from(imds(&emulator)));
    cloud::through_both_integrations(&emulator, &provider).await;
    assert_eq!(emulator.cloud_stats().azure_imds_tokens, 1);
    assert_eq!(
        emulator.managed_identity_resources(),
        ["https://management.azure.com"],
        "a scope's /.default is dropped: IMDS wants a resource"
    );
}

#[tokio::test]
async fn app_service_tokens_work_through_both_integrations() {
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(ManagedIdentity::from(app_service(&emulator)));
    cloud::through_both_integrations(&emulator, &provider).await;
    assert_eq!(emulator.cloud_stats().azure_app_service_tokens, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_callers_make_one_request_to_each_endpoint() {
    let emulator = Emulator::start().await.unwrap();
    cloud::cold_herd(&TokenProvider::new(imds(&emulator)), 1000).await;
    cloud::cold_herd(&TokenProvider::new(app_service(&emulator)), 1000).await;
    let stats = emulator.cloud_stats();
    assert_eq!(
        (stats.azure_imds_tokens, stats.azure_app_service_tokens),
        (1, 1)
    );
}

#[tokio::test]
async fn short_lived_tokens_are_replaced_before_their_expires_on() {
    let emulator = Emulator::start().await.unwrap();
    cloud::refreshed_before_expiry(&emulator, TokenProvider::new(imds(&emulator)), |e| {
        e.cloud_stats().azure_imds_tokens
    })
    .await;
    let emulator = Emulator::start().await.unwrap();
    emulator.set_expires_on(ExpiresOn::UnixNumber);
    cloud::refreshed_before_expiry(&emulator, TokenProvider::new(app_service(&emulator)), |e| {
        e.cloud_stats().azure_app_service_tokens
    })
    .await;
}

#[tokio::test]
async fn expires_on_is_a_string_or_a_number_and_its_absence_is_an_error_naming_it() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_token_ttl(std::time::Duration::from_secs(1800));
    for format in [ExpiresOn::UnixString, ExpiresOn::UnixNumber] {
        emulator.set_expires_on(format);
        let token = imds(&emulator).fetch_token().await.unwrap();
        let lifetime = token.lifetime().as_secs();
        assert!((1798..=1800).contains(&lifetime), "{format:?}: {lifetime}");
    }
    emulator.set_expires_on(ExpiresOn::Missing);
    for source in [
        Box::new(imds(&emulator)) as Box<dyn TokenSource>,
        Box::new(app_service(&emulator)),
    ] {
        let error = source.fetch_token().await.unwrap_err();
        assert!(
            matches!(error, Error::MissingField("expires_on")),
            "{error:?}"
        );
        assert!(error.to_string().contains("expires_on"));
    }
}

#[tokio::test]
async fn a_user_assigned_identity_is_named_and_an_unknown_one_is_refused_for_good() {
    let emulator = Emulator::start().await.unwrap();
    let known = UserAssignedId::ClientId(emulator.azure_client_id());
    imds(&emulator)
        .user_assigned(known.clone())
        .fetch_token()
        .await
        .unwrap();
    app_service(&emulator)
        .user_assigned(known)
        .fetch_token()
        .await
        .unwrap();
    assert_ne!(
        imds(&emulator).store_key(),
        imds(&emulator)
            .user_assigned(UserAssignedId::ObjectId("x".into()))
            .store_key()
    );
    let unknown = UserAssignedId::ClientId("00000000-0000-0000-0000-000000000000".into());
    let error = imds(&emulator)
        .user_assigned(unknown)
        .fetch_token()
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("HTTP 400") && text.contains("Identity not found"),
        "{text}"
    );
    assert!(text.contains("Azure IMDS at http://127.0.0.1"), "{text}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn a_wrong_identity_header_is_refused_and_the_secret_never_shown() {
    let emulator = Emulator::start().await.unwrap();
    let wrong = AppService::new(
        emulator.app_service_endpoint(),
        "not-the-secret-12345",
        "https://vault.azure.net",
    );
    let error = wrong.fetch_token().await.unwrap_err();
    let text = format!("{error} {error:?} {wrong:?}");
    assert!(text.contains("HTTP 401"), "{text}");
    assert!(!text.contains("not-the-secret-12345"), "{text}");
    let right = app_service(&emulator);
    assert!(!format!("{right:?}").contains(&emulator.app_service_secret()));
}

#[tokio::test]
async fn without_the_platform_variables_app_service_names_them() {
    // This test process has neither IDENTITY_ENDPOINT nor IDENTITY_HEADER.
    let error = AppService::from_env("https://vault.azure.net")
        .fetch_token()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::MissingEnvVars { names }
            if names == &["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]),
        "{error:?}"
    );
    assert_eq!(ManagedIdentity::new("https://x").kind(), "imds");
}

#[tokio::test]
async fn a_fleet_store_shares_one_managed_identity_token() {
    let emulator = Emulator::start().await.unwrap();
    cloud::shared_through_a_store(
        || imds(&emulator),
        &emulator,
        |e| e.cloud_stats().azure_imds_tokens,
    )
    .await;
    let emulator = Emulator::start().await.unwrap();
    cloud::shared_through_a_store(
        || app_service(&emulator),
        &emulator,
        |e| e.cloud_stats().azure_app_service_tokens,
    )
    .await;
}

#[tokio::test]
async fn a_revoked_managed_identity_token_costs_one_refresh() {
    let emulator = Emulator::start().await.unwrap();
    cloud::revocation_costs_one_refresh(&emulator, TokenProvider::new(imds(&emulator)), |e| {
        e.cloud_stats().azure_imds_tokens
    })
    .await;
    cloud::revocation_costs_one_refresh(
        &emulator,
        TokenProvider::new(app_service(&emulator)),
        |e| e.cloud_stats().azure_app_service_tokens,
    )
    .await;
}

#[tokio::test]
async fn plain_http_goes_only_to_imds_and_loopback() {
    let error = Imds::new("https://management.azure.com")
        .endpoint("http://imds.example.com/metadata/identity/oauth2/token")
        .fetch_token()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InsecureTransport { host, .. } if host == "imds.example.com"),
        "{error:?}"
    );
    let error = AppService::new("http://identity.example.com/msi/token", "s", "https://x")
        .fetch_token()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::InsecureTransport { .. }),
        "{error:?}"
    );
}
