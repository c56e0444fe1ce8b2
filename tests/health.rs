//! What an operator sees: the provider's `health()` snapshot, and (feature `metrics`) the
//! metrics it records, after a success, a failure and a forced refresh.

mod common;

use std::time::Duration;

use common::*;
use httpmock::prelude::*;
use token_refresh::{Error, TokenProvider};

#[tokio::test]
async fn health_after_a_success_a_failure_and_a_forced_refresh() {
    let server = MockServer::start_async().await;
    let mocks = scripted_token_server(
        &server,
        vec![
            Reply::token("tok-1"),
            Reply::token("tok-2"),
            Reply::status(400),
            Reply::token("tok-3"),
        ],
    )
    .await;
    let provider = TokenProvider::builder(source(&server).jti(true))
        .name("health-test")
        .cooldown(Duration::from_millis(200))
        .build();

    let health = provider.health();
    assert!(!health.token_cached && !health.is_ready() && !health.refreshing);
    assert_eq!((health.token_requests, health.consecutive_failures), (0, 0));

    // A success.
    let first = provider.token().await.unwrap();
    let health = provider.health();
    assert!(health.token_cached && health.is_ready());
    assert!(health.expires_in.unwrap() > Duration::from_secs(3590));
    assert!(health.usable_for.unwrap() < health.expires_in.unwrap());
    assert!(health.refresh_in.unwrap() < health.usable_for.unwrap());
    assert!(health.last_refresh.is_some() && health.last_error.is_none());
    assert_eq!((health.token_requests, health.consecutive_failures), (1, 0));

    // A forced refresh: the server rejected tok-1.
    assert!(provider.reject(&first));
    let second = provider.token().await.unwrap();
    assert_eq!(second.expose_secret(), "tok-2");
    let health = provider.health();
    assert_eq!((health.token_requests, health.forced_refreshes), (2, 1));

    // A failure (400, permanent) after the token is dropped.
    provider.invalidate(&second);
    let error = provider.token().await.unwrap_err();
    let health = provider.health();
    assert!(!health.token_cached && !health.is_ready());
    assert_eq!(health.consecutive_failures, 1);
    assert!(matches!(
        health.last_error,
        Some(Error::HttpStatus { status: 400, .. })
    ));
    assert_eq!(health.last_error.unwrap().to_string(), error.to_string());
    assert!(health.cooling_down_for.is_some());
    assert_eq!(health.token_requests, 3);

    // Recovery after the cool-down resets the failures.
    tokio::time::sleep(Duration::from_millis(250)).await;
    provider.token().await.unwrap();
    let health = provider.health();
    assert_eq!((health.consecutive_failures, health.token_requests), (0, 4));
    assert!(health.last_error.is_none() && health.cooling_down_for.is_none());
    assert_eq!(total_calls(&mocks).await, 4);
}

#[cfg(all(feature = "metrics", feature = "reqwest"))]
mod metrics_recorded {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
        Recorder, SharedString, Unit,
    };

    use super::*;

    /// One value per metric name and label set: counters and gauges as numbers, histograms
    /// as the list of what was recorded.
    #[derive(Default)]
    struct Value {
        number: AtomicU64,
        samples: Mutex<Vec<f64>>,
    }

    impl CounterFn for Value {
        fn increment(&self, value: u64) {
            self.number.fetch_add(value, Ordering::SeqCst);
        }
        fn absolute(&self, value: u64) {
            self.number.store(value, Ordering::SeqCst);
        }
    }

    impl GaugeFn for Value {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            self.number.store(value.to_bits(), Ordering::SeqCst);
        }
    }

    impl HistogramFn for Value {
        fn record(&self, value: f64) {
            self.samples.lock().unwrap().push(value);
        }
    }

    #[derive(Default)]
    struct TestRecorder(Mutex<HashMap<String, Arc<Value>>>);

    impl TestRecorder {
        fn value(&self, key: &Key) -> Arc<Value> {
            let mut labels: Vec<_> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let id = format!("{}{{{}}}", key.name(), labels.join(","));
            self.0.lock().unwrap().entry(id).or_default().clone()
        }
        fn get(&self, id: &str) -> Option<Arc<Value>> {
            self.0.lock().unwrap().get(id).cloned()
        }
        fn counter(&self, id: &str) -> u64 {
            self.get(id).map_or(0, |v| v.number.load(Ordering::SeqCst))
        }
        fn gauge(&self, id: &str) -> Option<f64> {
            self.get(id)
                .map(|v| f64::from_bits(v.number.load(Ordering::SeqCst)))
        }
        fn samples(&self, id: &str) -> usize {
            self.get(id).map_or(0, |v| v.samples.lock().unwrap().len())
        }
    }

    impl Recorder for TestRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.value(key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.value(key))
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.value(key))
        }
    }

    /// The recorder of this test binary; tests tell their metrics apart by provider name.
    fn recorder() -> &'static TestRecorder {
        static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
        RECORDER.get_or_init(|| {
            let recorder: &'static TestRecorder = Box::leak(Box::default());
            metrics::set_global_recorder(recorder).expect("the only recorder");
            recorder
        })
    }

    #[tokio::test]
    async fn metrics_after_a_success_a_failure_a_forced_refresh_and_a_resend() {
        let m = recorder();
        let server = MockServer::start_async().await;
        let mocks = scripted_token_server(
            &server,
            vec![
                Reply::token("tok-1"),
                Reply::token("tok-2"),
                Reply::status(503),
            ],
        )
        .await;
        let api_rejects = server
            .mock_async(|when, then| {
                when.path("/v2/projects")
                    .header("authorization", "Bearer tok-1");
                then.status(401);
            })
            .await;
        server
            .mock_async(|when, then| {
                when.path("/v2/projects")
                    .header("authorization", "Bearer tok-2");
                then.status(200);
            })
            .await;
        let provider = TokenProvider::builder(source(&server).jti(true))
            .name("metrics-test")
            .max_attempts(2)
            .backoff(Duration::from_millis(10), Duration::from_millis(10))
            .build();
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(token_refresh::AuthMiddleware::new(provider.clone()))
            .build();

        // tok-1 is rejected: a forced refresh, tok-2, and one resend.
        let response = client.get(server.url("/v2/projects")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(api_rejects.calls_async().await, 1);
        let p = "provider=metrics-test";
        assert_eq!(
            m.counter(&format!(
                "token_refresh_token_requests_total{{outcome=success,{p}}}"
            )),
            2
        );
        assert_eq!(
            m.counter(&format!(
                "token_refresh_forced_refreshes_total{{{p},reason=rejected}}"
            )),
            1
        );
        assert_eq!(m.counter(&format!("token_refresh_resends_total{{{p}}}")), 1);
        assert_eq!(
            m.samples(&format!(
                "token_refresh_refresh_duration_seconds{{outcome=success,{p}}}"
            )),
            2
        );
        assert_eq!(m.gauge(&format!("token_refresh_ready{{{p}}}")), Some(1.0));
        let at = m
            .gauge(&format!("token_refresh_token_expires_at_seconds{{{p}}}"))
            .unwrap();
        assert!(at > 1.7e9, "{at}");

        // A refresh that fails twice with 503 (transient).
        let tok2 = provider.token().await.unwrap();
        provider.invalidate(&tok2);
        provider.token().await.unwrap_err();
        assert_eq!(
            m.counter(&format!(
                "token_refresh_token_requests_total{{outcome=transient_error,{p}}}"
            )),
            2
        );
        assert_eq!(
            m.samples(&format!(
                "token_refresh_refresh_duration_seconds{{outcome=error,{p}}}"
            )),
            1
        );
        assert_eq!(total_calls(&mocks).await, 4);
        // The failed refresh left no token: not ready.
        assert_eq!(m.gauge(&format!("token_refresh_ready{{{p}}}")), Some(0.0));

        // A rejection inside the storm guard is counted as suppressed.
        let held = TokenProvider::builder(|| async {
            token_refresh::AccessToken::new("same", Duration::from_secs(3600))
        })
        .name("metrics-guard")
        .build();
        // The `ready` gauge exists before the first token.
        assert_eq!(
            m.gauge("token_refresh_ready{provider=metrics-guard}"),
            Some(0.0)
        );
        let t = held.token().await.unwrap();
        assert!(held.reject(&t));
        let t = held.token().await.unwrap();
        assert!(!held.reject(&t));
        assert_eq!(
            m.counter(
                "token_refresh_forced_refreshes_total{provider=metrics-guard,reason=rejected}"
            ),
            1
        );
        assert_eq!(
            m.counter("token_refresh_forced_refreshes_suppressed_total{provider=metrics-guard}"),
            1
        );
    }
}

#[tokio::test]
async fn health_serializes_for_a_readiness_endpoint_without_secrets() {
    let server = MockServer::start_async().await;
    let mocks = scripted_token_server(
        &server,
        vec![Reply::token("tok-secret-1"), Reply::status(400)],
    )
    .await;
    let provider = TokenProvider::builder(source(&server).jti(true)).build();

    let json = serde_json::to_value(provider.health()).unwrap();
    assert_eq!(json["ready"], false);
    assert_eq!(json["token_cached"], false);
    assert!(json["expires_in_seconds"].is_null() && json["last_refresh_unix_seconds"].is_null());

    let token = provider.token().await.unwrap();
    let json = serde_json::to_value(provider.health()).unwrap();
    assert_eq!(json["ready"], true);
    let expires = json["expires_in_seconds"].as_f64().unwrap();
    assert!((3590.0..=3600.0).contains(&expires), "{expires}");
    assert!(json["usable_for_seconds"].as_f64().unwrap() < expires);
    let refreshed = json["last_refresh_unix_seconds"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now - refreshed < 60, "{refreshed} vs {now}");
    assert_eq!(json["token_requests"], 1);

    // A failure: the error as its Display text, and no secret anywhere.
    provider.invalidate(&token);
    let error = provider.token().await.unwrap_err();
    let text = serde_json::to_string(&provider.health()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["last_error"], error.to_string());
    assert_eq!(json["consecutive_failures"], 1);
    assert!(json["cooling_down_for_seconds"].as_f64().unwrap() > 0.0);
    for secret in ["tok-secret-1", SECRET] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert_eq!(total_calls(&mocks).await, 2);
}
