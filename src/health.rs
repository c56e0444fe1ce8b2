//! What an operator can watch: a snapshot of a provider's state for readiness probes and
//! dashboards, and (feature `metrics`) counters, gauges and a histogram through the
//! [`metrics`](https://docs.rs/metrics) facade.
//!
//! # Metrics
//!
//! With the `metrics` feature, every provider records these through whatever recorder the
//! application installed (Prometheus, StatsD, …). Each carries the label `provider`: the
//! name set with [`TokenProviderBuilder::name`](crate::TokenProviderBuilder::name) (by
//! default the source's: the token endpoint's host and the client id or issuer).
//!
//! | name | kind | unit | labels | what |
//! |---|---|---|---|---|
//! | `token_refresh_ready` | gauge | 0 or 1 | | 1 while a usable token is cached; 0 from the provider's start until its first token, and after a failed refresh left none |
//! | `token_refresh_token_requests_total` | counter | requests | `outcome` = `success`, `transient_error`, `permanent_error` | calls of the token source (one per attempt) |
//! | `token_refresh_refresh_duration_seconds` | histogram | seconds | `outcome` = `success`, `error` | a refresh from its first attempt to its outcome, retries included |
//! | `token_refresh_forced_refreshes_total` | counter | refreshes | `reason` = `revoked`, `rejected` | refreshes forced by a rejection (HTTP 401, gRPC 16) of a token the API had accepted before (`revoked`) or not (`rejected`) |
//! | `token_refresh_forced_refreshes_suppressed_total` | counter | rejections | | rejections the storm guard answered without a refresh |
//! | `token_refresh_resends_total` | counter | requests | | requests resent with a fresh token after a rejection |
//! | `token_refresh_dpop_nonce_resends_total` | counter | requests | | requests the integrations sent again with the server's DPoP nonce (a 401 `use_dpop_nonce`): same token, new proof |
//! | `token_refresh_token_expires_at_seconds` | gauge | seconds since the Unix epoch | | when the cached token expires, set at each refresh |
//! | `token_refresh_store_ok` | gauge | 0 or 1 | | with a [token store](crate::store): 1 while its last call worked (from the provider's start), 0 while it fails or times out |
//! | `token_refresh_store_errors_total` | counter | calls | | token store calls that failed or timed out (not the once-a-second probe of a store that is down) |
//!
//! Every metric is described (`# HELP` with its unit in Prometheus) when a provider is
//! built, so install the recorder before building providers.
//!
//! - **Time to expiry** is not a gauge of its own: it would change only when the crate wrote
//!   it, and be stale in between. Compute it where it is read, from the absolute time, which
//!   is never stale: `token_refresh_token_expires_at_seconds - time()` in PromQL.
//! - **`ready`** is written at each refresh and each [`health`](crate::TokenProvider::health)
//!   snapshot. A provider that nobody calls keeps its last value even once its token has
//!   expired; alert on the expiry above, not on `ready` alone.
//! - **The histogram** renders as a summary (quantiles) in `metrics-exporter-prometheus`
//!   unless buckets are set for it. [`REFRESH_DURATION_BUCKETS`] suits a token request:
//!
//! ```
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//! use token_refresh::health::{REFRESH_DURATION_BUCKETS, REFRESH_DURATION_METRIC};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let prometheus = PrometheusBuilder::new()
//!     .set_buckets_for_metric(
//!         Matcher::Full(REFRESH_DURATION_METRIC.to_owned()),
//!         REFRESH_DURATION_BUCKETS,
//!     )?
//!     .install_recorder()?;
//! // Then build the providers, and serve `prometheus.render()` at `/metrics`.
//! # let _ = prometheus.render();
//! # Ok(()) }
//! ```

use std::time::{Duration, SystemTime};

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::error::Error;

/// The name of the refresh-duration histogram, to set its buckets in an exporter.
pub const REFRESH_DURATION_METRIC: &str = "token_refresh_refresh_duration_seconds";

/// Histogram buckets (seconds) for [`REFRESH_DURATION_METRIC`]. A healthy token request takes
/// tens of milliseconds to a second; retries with backoff stretch a refresh to seconds, and
/// the retry budget ends it within a minute. The buckets resolve the healthy range finely
/// and still tell a retried refresh (1–10 s) from one that ran into the budget (30–60 s).
pub const REFRESH_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A snapshot of a [`TokenProvider`](crate::TokenProvider)'s state, from
/// [`TokenProvider::health`](crate::TokenProvider::health): cheap enough for every readiness
/// probe (one uncontended lock, a clock read, no I/O).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), token_refresh::Error> {
/// use std::time::Duration;
/// use token_refresh::{AccessToken, TokenProvider};
///
/// let provider = TokenProvider::new(|| async { AccessToken::new("t", Duration::from_secs(3600)) });
/// assert!(!provider.health().is_ready()); // lazy: nothing fetched yet
/// provider.token().await?;
/// let health = provider.health();
/// assert!(health.is_ready());
/// assert_eq!(health.consecutive_failures, 0);
/// assert!(health.expires_in.unwrap() > Duration::from_secs(3500));
/// # Ok(()) }
/// ```
///
/// # JSON
///
/// `Health` serializes (serde) for a readiness endpoint: durations as seconds
/// (`expires_in_seconds`, …, fractional), `last_refresh` and `store_error_at` as Unix
/// seconds (`last_refresh_unix_seconds`, `store_error_unix_seconds`), the last error as its
/// `Display` text (scrubbed of secrets, like every error of this crate), `null` for what is
/// not there, and `ready` as [`is_ready`](Health::is_ready) says. A readiness handler:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use token_refresh::{AccessToken, TokenProvider};
///
/// /// Answers `GET /ready`: 200 with the health as JSON when a token is at hand, else 503.
/// fn ready(provider: &TokenProvider) -> http::Response<String> {
///     let health = provider.health();
///     let status = if health.is_ready() { 200 } else { 503 };
///     let body = serde_json::to_string(&health).expect("Health always serializes");
///     http::Response::builder()
///         .status(status)
///         .header("content-type", "application/json")
///         .body(body)
///         .expect("a valid response")
/// }
///
/// let provider = TokenProvider::new(|| async { AccessToken::new("t", Duration::from_secs(3600)) });
/// assert_eq!(ready(&provider).status(), 503);
/// provider.token().await?;
/// let response = ready(&provider);
/// assert_eq!(response.status(), 200);
/// let json: serde_json::Value = serde_json::from_str(response.body())?;
/// assert_eq!(json["ready"], true);
/// assert!(json["expires_in_seconds"].as_f64().unwrap() > 3500.0);
/// assert!(json["last_refresh_unix_seconds"].as_u64().unwrap() > 1_700_000_000);
/// assert_eq!(json["last_error"], serde_json::Value::Null);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Health {
    /// Whether a token is cached (it may be past its hard margin).
    pub token_cached: bool,
    /// Time until the cached token expires.
    pub expires_in: Option<Duration>,
    /// Time until the cached token reaches its hard margin and is no longer handed out.
    pub usable_for: Option<Duration>,
    /// Time until the cached token's proactive refresh point (zero once it is past).
    pub refresh_in: Option<Duration>,
    /// Whether a refresh is in flight.
    pub refreshing: bool,
    /// Refreshes that failed in a row since the last success.
    pub consecutive_failures: u32,
    /// The error of the last refresh, if it failed.
    pub last_error: Option<Error>,
    /// When the last successful refresh completed (wall clock).
    pub last_refresh: Option<SystemTime>,
    /// Calls of the token source so far, failed ones included.
    pub token_requests: u64,
    /// Refreshes forced by rejections so far.
    pub forced_refreshes: u64,
    /// Requests the integrations sent again with the server's DPoP nonce (a 401
    /// `use_dpop_nonce`), with the same token and a new proof, so far.
    pub dpop_nonce_resends: u64,
    /// Time left of a cool-down after a failed refresh, during which callers without a
    /// usable token get `last_error` at once.
    pub cooling_down_for: Option<Duration>,
    /// With a [token store](crate::store): whether its last call worked (`false` while it is
    /// down, slow or failing, when the provider fetches tokens without it; and for a store
    /// the provider refused under [`build`](crate::TokenProviderBuilder::build)). While it
    /// fails, the provider asks it once a second whether it answers again, so this turns
    /// `true` within about a second of the store's return, not at the next refresh. `None`
    /// without a store.
    pub store_ok: Option<bool>,
    /// With a token store: the text of its last error (scrubbed: no password, no token),
    /// kept after the store recovers. `None` if it never failed.
    pub store_error: Option<String>,
    /// When [`store_error`](Self::store_error) happened (wall clock).
    pub store_error_at: Option<SystemTime>,
}

impl Health {
    /// Whether a caller would get a token now without waiting: one is cached and not yet
    /// inside its hard margin. What a readiness probe asks.
    pub fn is_ready(&self) -> bool {
        self.usable_for.is_some_and(|d| !d.is_zero())
    }
}

impl Serialize for Health {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let unix = |at: SystemTime| {
            at.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        let mut s = serializer.serialize_struct("Health", 16)?;
        s.serialize_field("ready", &self.is_ready())?;
        s.serialize_field("token_cached", &self.token_cached)?;
        s.serialize_field("expires_in_seconds", &secs(self.expires_in))?;
        s.serialize_field("usable_for_seconds", &secs(self.usable_for))?;
        s.serialize_field("refresh_in_seconds", &secs(self.refresh_in))?;
        s.serialize_field("refreshing", &self.refreshing)?;
        s.serialize_field("consecutive_failures", &self.consecutive_failures)?;
        s.serialize_field(
            "last_error",
            &self.last_error.as_ref().map(ToString::to_string),
        )?;
        s.serialize_field("last_refresh_unix_seconds", &self.last_refresh.map(unix))?;
        s.serialize_field("token_requests", &self.token_requests)?;
        s.serialize_field("forced_refreshes", &self.forced_refreshes)?;
        s.serialize_field("dpop_nonce_resends", &self.dpop_nonce_resends)?;
        s.serialize_field("cooling_down_for_seconds", &secs(self.cooling_down_for))?;
        s.serialize_field("store_ok", &self.store_ok)?;
        s.serialize_field("store_error", &self.store_error)?;
        s.serialize_field("store_error_unix_seconds", &self.store_error_at.map(unix))?;
        s.end()
    }
}

/// Records the crate's metrics; a no-op without the `metrics` feature.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    #[cfg(feature = "metrics")]
    provider: metrics::SharedString,
}

impl Metrics {
    pub(crate) fn new(name: &str) -> Self {
        let _ = name;
        #[cfg(feature = "metrics")]
        describe();
        Self {
            #[cfg(feature = "metrics")]
            provider: metrics::SharedString::from(name.to_owned()),
        }
    }

    /// One call of the token source ended with `result`.
    pub(crate) fn token_request<T>(&self, result: &crate::Result<T>) {
        #[cfg(feature = "metrics")]
        {
            let outcome = match result {
                Ok(_) => "success",
                Err(e) if e.is_transient() => "transient_error",
                Err(_) => "permanent_error",
            };
            metrics::counter!(
                "token_refresh_token_requests_total",
                "provider" => self.provider.clone(),
                "outcome" => outcome
            )
            .increment(1);
        }
        let _ = result;
    }

    /// A refresh ended after `elapsed`; `expires_at` is its token's expiry if it succeeded.
    pub(crate) fn refresh(&self, elapsed: Duration, expires_in: Option<Duration>) {
        #[cfg(feature = "metrics")]
        {
            let outcome = if expires_in.is_some() {
                "success"
            } else {
                "error"
            };
            metrics::histogram!(
                REFRESH_DURATION_METRIC,
                "provider" => self.provider.clone(),
                "outcome" => outcome
            )
            .record(elapsed.as_secs_f64());
            if let Some(expires_in) = expires_in {
                let at = SystemTime::now() + expires_in;
                let since_epoch = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                metrics::gauge!(
                    "token_refresh_token_expires_at_seconds",
                    "provider" => self.provider.clone()
                )
                .set(since_epoch.as_secs_f64());
            }
        }
        let _ = (elapsed, expires_in);
    }

    /// Whether a usable token is cached.
    pub(crate) fn ready(&self, ready: bool) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("token_refresh_ready", "provider" => self.provider.clone()).set(if ready {
            1.0
        } else {
            0.0
        });
        let _ = ready;
    }

    /// A rejection forced a refresh, of a token the API had accepted (`Some(true)`, a
    /// revocation) or not (`Some(false)`), or was held by the storm guard (`None`).
    pub(crate) fn forced_refresh(&self, revoked: Option<bool>) {
        #[cfg(feature = "metrics")]
        match revoked {
            Some(revoked) => metrics::counter!(
                "token_refresh_forced_refreshes_total",
                "provider" => self.provider.clone(),
                "reason" => if revoked { "revoked" } else { "rejected" }
            )
            .increment(1),
            None => metrics::counter!(
                "token_refresh_forced_refreshes_suppressed_total",
                "provider" => self.provider.clone()
            )
            .increment(1),
        }
        let _ = revoked;
    }

    /// A call to the token store worked (`true`) or failed or timed out (`false`).
    pub(crate) fn store_call(&self, ok: bool) {
        #[cfg(feature = "metrics")]
        {
            metrics::gauge!("token_refresh_store_ok", "provider" => self.provider.clone())
                .set(if ok { 1.0 } else { 0.0 });
            if !ok {
                metrics::counter!(
                    "token_refresh_store_errors_total",
                    "provider" => self.provider.clone()
                )
                .increment(1);
            }
        }
        let _ = ok;
    }

    /// A request is resent with a fresh token.
    pub(crate) fn resend(&self) {
        #[cfg(feature = "metrics")]
        metrics::counter!("token_refresh_resends_total", "provider" => self.provider.clone())
            .increment(1);
    }

    /// A request is resent with the server's DPoP nonce.
    pub(crate) fn nonce_resend(&self) {
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "token_refresh_dpop_nonce_resends_total",
            "provider" => self.provider.clone()
        )
        .increment(1);
    }
}

/// Describes every metric (its `# HELP` text and unit) to the installed recorder.
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "token_refresh_ready",
        "1 while the provider holds a usable access token, else 0"
    );
    describe_counter!(
        "token_refresh_token_requests_total",
        Unit::Count,
        "Calls of the token source (one per attempt), by outcome"
    );
    describe_histogram!(
        REFRESH_DURATION_METRIC,
        Unit::Seconds,
        "Duration of a token refresh from its first attempt to its outcome, retries included"
    );
    describe_counter!(
        "token_refresh_forced_refreshes_total",
        Unit::Count,
        "Refreshes forced by a rejection (HTTP 401, gRPC UNAUTHENTICATED), by reason"
    );
    describe_counter!(
        "token_refresh_forced_refreshes_suppressed_total",
        Unit::Count,
        "Rejections the storm guard answered without a refresh"
    );
    describe_counter!(
        "token_refresh_resends_total",
        Unit::Count,
        "Requests resent with a fresh token after a rejection"
    );
    describe_counter!(
        "token_refresh_dpop_nonce_resends_total",
        Unit::Count,
        "Requests sent again with the server's DPoP nonce (same token, new proof)"
    );
    describe_gauge!(
        "token_refresh_store_ok",
        "With a token store: 1 while its last call worked, 0 while it fails or times out"
    );
    describe_counter!(
        "token_refresh_store_errors_total",
        Unit::Count,
        "Token store calls that failed or timed out (the provider fetched without the store)"
    );
    describe_gauge!(
        "token_refresh_token_expires_at_seconds",
        Unit::Seconds,
        "When the cached access token expires, in seconds since the Unix epoch"
    );
}
