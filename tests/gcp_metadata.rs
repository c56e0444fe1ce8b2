//! The GCP metadata server as a token source: access tokens and ID tokens from the
//! emulator's metadata server (never the real address), detection, and what a captive
//! portal or an unattached account gets.
#![cfg(all(feature = "gcp", feature = "reqwest", feature = "tower"))]

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::cloud;
use token_refresh::gcp::{METADATA_DETECT_TIMEOUT, MetadataServer};
use token_refresh::{Error, TokenProvider, TokenSource};
use token_refresh_emulator::{Emulator, MetadataBehaviour};

fn metadata(emulator: &Emulator) -> MetadataServer {
    MetadataServer::new().endpoint(emulator.origin())
}

fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn an_access_token_with_scopes_works_through_both_integrations() {
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(
        metadata(&emulator)
            .scope("https://www.googleapis.com/auth/cloud-platform")
            .scope("https://www.googleapis.com/auth/userinfo.email"),
    );
    cloud::through_both_integrations(&emulator, &provider).await;
    assert_eq!(emulator.cloud_stats().gcp_metadata_tokens, 1);
    assert_eq!(
        emulator.metadata_scopes(),
        [Some(
            "https://www.googleapis.com/auth/cloud-platform,https://www.googleapis.com/auth/userinfo.email"
                .to_owned()
        )]
    );
}

#[tokio::test]
async fn a_named_service_account_is_asked_for_by_email() {
    let emulator = Emulator::start().await.unwrap();
    let source = metadata(&emulator).service_account(emulator.gcp_service_account());
    source.fetch_token().await.unwrap();
    let unknown = metadata(&emulator).service_account("nobody@example.iam.gserviceaccount.com");
    let error = unknown.fetch_token().await.unwrap_err();
    assert!(
        matches!(&error, Error::Cloud { transient: false, problem, .. }
            if problem.contains("404") && problem.contains("nobody@example")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_callers_make_one_request_to_the_metadata_server() {
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(metadata(&emulator));
    cloud::cold_herd(&provider, 1000).await;
    assert_eq!(emulator.cloud_stats().gcp_metadata_tokens, 1);

    let ids = TokenProvider::new(metadata(&emulator).id_token("https://svc.example.com"));
    cloud::cold_herd(&ids, 1000).await;
    assert_eq!(emulator.cloud_stats().gcp_metadata_id_tokens, 1);
}

#[tokio::test]
async fn short_lived_tokens_are_replaced_before_they_expire() {
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(metadata(&emulator));
    cloud::refreshed_before_expiry(&emulator, provider, |e| e.cloud_stats().gcp_metadata_tokens)
        .await;
}

#[tokio::test]
async fn id_tokens_are_for_the_audience_asked_and_replaced_before_their_own_exp() {
    let emulator = Emulator::start().await.unwrap();
    let source = metadata(&emulator)
        .id_token("https://receiver-abc-uc.a.run.app")
        .full_format(true);
    let token = source.fetch_token().await.unwrap();
    let claims = claims(token.expose_secret());
    assert_eq!(claims["aud"], "https://receiver-abc-uc.a.run.app");
    assert_eq!(claims["google"]["compute_engine"]["project_id"], "emulator");
    // The lifetime is the JWT's own: exp minus now, nothing else says it.
    let exp = claims["exp"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lifetime = token.lifetime().as_secs();
    assert!(
        lifetime.abs_diff(exp - now) <= 1,
        "{lifetime} vs {}",
        exp - now
    );

    // Two-second ID tokens, used for three seconds: each replaced before its exp.
    let provider = TokenProvider::new(metadata(&emulator).id_token("https://svc.example.com"));
    cloud::refreshed_before_expiry(&emulator, provider, |e| {
        e.cloud_stats().gcp_metadata_id_tokens - 1
    })
    .await;
}

#[tokio::test]
async fn a_captive_portal_is_not_a_metadata_server() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_metadata_behaviour(MetadataBehaviour::CaptivePortal);
    for error in [
        metadata(&emulator).fetch_token().await.unwrap_err(),
        metadata(&emulator)
            .id_token("https://a")
            .fetch_token()
            .await
            .unwrap_err(),
    ] {
        let text = error.to_string();
        assert!(
            matches!(
                error,
                Error::Cloud {
                    transient: false,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(text.contains("Metadata-Flavor: Google"), "{text}");
        assert!(text.contains("HTML page"), "{text}");
        assert!(!text.contains("Sign in"), "the page is not copied: {text}");
    }
    assert!(!metadata(&emulator).detect().await);
}

#[tokio::test]
async fn an_instance_without_a_service_account_gets_a_404_that_says_what_to_attach() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_metadata_behaviour(MetadataBehaviour::NoServiceAccount);
    let error = metadata(&emulator).fetch_token().await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("HTTP 404") && text.contains("workload identity"),
        "{text}"
    );
    assert!(
        text.contains(&emulator.origin()),
        "names where it asked: {text}"
    );
    assert!(!error.is_transient());
}

#[tokio::test]
async fn detection_is_bounded_and_its_outcome_kept() {
    let emulator = Emulator::start().await.unwrap();
    let server = metadata(&emulator);
    assert!(server.detect().await);
    assert!(server.detect().await);
    assert_eq!(emulator.cloud_stats().gcp_metadata_pings, 1, "asked once");

    // A port that takes connections and never answers: not a metadata server, found out
    // within the detection timeout, and remembered.
    let (url, accepted) = cloud::black_hole().await;
    let silent = MetadataServer::new().endpoint(&url);
    let started = Instant::now();
    assert!(!silent.detect().await);
    let took = started.elapsed();
    assert!(
        took >= METADATA_DETECT_TIMEOUT && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let started = Instant::now();
    assert!(!silent.detect().await);
    assert!(started.elapsed() < Duration::from_millis(50), "cached");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_fleet_store_shares_one_metadata_token_and_a_revocation_costs_one_refresh() {
    let emulator = Emulator::start().await.unwrap();
    cloud::shared_through_a_store(
        || metadata(&emulator),
        &emulator,
        |e| e.cloud_stats().gcp_metadata_tokens,
    )
    .await;

    // The storm guard's revocation path: the API rejects a revoked token, the middleware
    // refreshes once and resends.
    let emulator = Emulator::start().await.unwrap();
    cloud::revocation_costs_one_refresh(&emulator, TokenProvider::new(metadata(&emulator)), |e| {
        e.cloud_stats().gcp_metadata_tokens
    })
    .await;
    // (ID tokens are not revocable: a metadata server hands out the same JWT again within
    // the second, and the middleware returns the rejection rather than resend it.)
}

#[tokio::test]
async fn plain_http_goes_only_to_the_metadata_hosts_and_loopback() {
    let source = MetadataServer::new().endpoint("http://metadata.example.com");
    let error = source.fetch_token().await.unwrap_err();
    assert!(
        matches!(&error, Error::InsecureTransport { host, .. } if host == "metadata.example.com"),
        "{error:?}"
    );
    // The real address is allowed (not contacted here: the check alone is asserted).
    let keys = [
        MetadataServer::new()
            .endpoint("http://169.254.169.254")
            .store_key(),
        MetadataServer::new()
            .endpoint("http://127.0.0.1:1")
            .store_key(),
    ];
    assert_ne!(keys[0], keys[1]);
}
