//! The crate's metrics as an operator reads them: rendered by the Prometheus exporter, every
//! metric has its `# HELP` line, the refresh duration is a histogram with the suggested
//! buckets, and a provider that never had a token already shows `ready 0`.
#![cfg(all(feature = "metrics", feature = "reqwest"))]

mod common;

use common::*;
use httpmock::prelude::*;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use reqwest_middleware::ClientBuilder;
use token_refresh::health::{REFRESH_DURATION_BUCKETS, REFRESH_DURATION_METRIC};
use token_refresh::store::{StoreConfig, StoreError, TokenStore};
use token_refresh::{AuthMiddleware, TokenProvider};

/// A store that is down: every call fails.
#[derive(Debug)]
struct Down;

#[async_trait::async_trait]
impl TokenStore for Down {
    async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Err("connection refused".into())
    }
    async fn put(&self, _: &str, _: &[u8], _: std::time::Duration) -> Result<(), StoreError> {
        Err("connection refused".into())
    }
    async fn delete_if(&self, _: &str, _: &[u8]) -> Result<bool, StoreError> {
        Err("connection refused".into())
    }
    async fn try_lease(
        &self,
        _: &str,
        _: &str,
        _: std::time::Duration,
    ) -> Result<bool, StoreError> {
        Err("connection refused".into())
    }
    async fn release(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err("connection refused".into())
    }
    fn sealing(&self) -> StoreConfig {
        StoreConfig::plaintext()
    }
}

const METRICS: [&str; 9] = [
    "token_refresh_store_ok",
    "token_refresh_store_errors_total",
    "token_refresh_ready",
    "token_refresh_token_requests_total",
    "token_refresh_refresh_duration_seconds",
    "token_refresh_forced_refreshes_total",
    "token_refresh_forced_refreshes_suppressed_total",
    "token_refresh_resends_total",
    "token_refresh_token_expires_at_seconds",
];

#[tokio::test]
async fn the_prometheus_exporter_renders_help_lines_buckets_and_ready() {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(REFRESH_DURATION_METRIC.to_owned()),
            REFRESH_DURATION_BUCKETS,
        )
        .unwrap()
        .install_recorder()
        .unwrap();

    let idle = TokenProvider::builder(|| async {
        token_refresh::AccessToken::new("never-asked", std::time::Duration::from_secs(60))
    })
    .name("idle")
    .build();
    let text = handle.render();
    assert!(
        text.contains(r#"token_refresh_ready{provider="idle"} 0"#),
        "{text}"
    );

    // A refresh, a rejection of a token the API never accepted, a resend: every metric
    // gets a value.
    let server = MockServer::start_async().await;
    let tokens =
        scripted_token_server(&server, vec![Reply::token("tok-1"), Reply::token("tok-2")]).await;
    api_route(&server, GET, "/v2/projects", "tok-1", 401).await;
    api_route(&server, GET, "/v2/projects", "tok-2", 401).await;
    let provider = TokenProvider::builder(source(&server).jti(true))
        .name("busy")
        .build();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(provider.clone()))
        .build();
    let response = client.get(server.url("/v2/projects")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(total_calls(&tokens).await, 2);

    // A provider whose store is down still gets its token, and the store's state shows.
    let fleet = TokenProvider::builder(|| async {
        token_refresh::AccessToken::new("without-store", std::time::Duration::from_secs(60))
    })
    .name("fleet")
    .store(Down)
    .store_key("prometheus-test")
    .try_build()
    .unwrap();
    assert_eq!(
        fleet.token().await.unwrap().expose_secret(),
        "without-store"
    );

    let text = handle.render();
    println!("{text}");
    assert!(
        text.contains(r#"token_refresh_store_ok{provider="fleet"} 0"#),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            .starts_with(r#"token_refresh_store_errors_total{provider="fleet"}"#)
            && !l.ends_with(" 0")),
        "{text}"
    );
    for name in METRICS {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "no HELP line for {name} in:\n{text}"
        );
    }
    assert!(text.contains("# TYPE token_refresh_refresh_duration_seconds histogram"));
    assert!(
        text.contains(
            r#"token_refresh_refresh_duration_seconds_bucket{provider="busy",outcome="success",le="0.25"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"token_refresh_ready{provider="busy"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("token_refresh_forced_refreshes_total{")
            && text.contains(r#"reason="rejected""#),
        "{text}"
    );
    // Units are part of the help text the exporter renders.
    assert!(text.contains("# HELP token_refresh_token_expires_at_seconds When the cached"));
    drop(idle);
}
