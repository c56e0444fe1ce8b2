//! What an operator can watch: a snapshot of a provider's state for readiness probes and
//! dashboards, and (feature `metrics`) counters, gauges and a histogram through the
//! [`metrics`](https://docs.rs/metrics) facade.
//!
//! # Metrics
//!
//! With the `metrics` feature, every provider records these through whatever recorder the
//! application installed (Prometheus, StatsD, …). Each carries the label `provider`: the
//! name set with [`TokenProviderBuilder::name`](crate::TokenProviderBuilder::name)
//! (`default` if none).
//!
//! | name | kind | unit | labels | what |
//! |---|---|---|---|---|
//! | `token_refresh_token_requests_total` | counter | requests | `outcome` = `success`, `transient_error`, `permanent_error` | calls of the token source (one per attempt) |
//! | `token_refresh_refresh_duration_seconds` | histogram | seconds | `outcome` = `success`, `error` | a refresh from its first attempt to its outcome, retries included |
//! | `token_refresh_forced_refreshes_total` | counter | refreshes | | refreshes forced by a rejection (HTTP 401, gRPC 16) |
//! | `token_refresh_forced_refreshes_suppressed_total` | counter | rejections | | rejections the storm guard answered without a refresh |
//! | `token_refresh_resends_total` | counter | requests | | requests resent with a fresh token after a rejection |
//! | `token_refresh_token_expires_at_seconds` | gauge | seconds since the Unix epoch | | when the cached token expires, set at each refresh |
//! | `token_refresh_token_expiry_seconds` | gauge | seconds | | time until the cached token expires, set at each refresh and each [`health`](crate::TokenProvider::health) snapshot |

use std::time::{Duration, SystemTime};

use crate::error::Error;

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
    /// Time left of a cool-down after a failed refresh, during which callers without a
    /// usable token get `last_error` at once.
    pub cooling_down_for: Option<Duration>,
}

impl Health {
    /// Whether a caller would get a token now without waiting: one is cached and not yet
    /// inside its hard margin. What a readiness probe asks.
    pub fn is_ready(&self) -> bool {
        self.usable_for.is_some_and(|d| !d.is_zero())
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
                "token_refresh_refresh_duration_seconds",
                "provider" => self.provider.clone(),
                "outcome" => outcome
            )
            .record(elapsed.as_secs_f64());
            if let Some(expires_in) = expires_in {
                self.expiry(expires_in);
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

    /// The cached token expires in `expires_in`.
    pub(crate) fn expiry(&self, expires_in: Duration) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("token_refresh_token_expiry_seconds", "provider" => self.provider.clone())
            .set(expires_in.as_secs_f64());
        let _ = expires_in;
    }

    /// A rejection forced a refresh (`true`) or was held by the storm guard (`false`).
    pub(crate) fn forced_refresh(&self, forced: bool) {
        #[cfg(feature = "metrics")]
        {
            let name = if forced {
                "token_refresh_forced_refreshes_total"
            } else {
                "token_refresh_forced_refreshes_suppressed_total"
            };
            metrics::counter!(name, "provider" => self.provider.clone()).increment(1);
        }
        let _ = forced;
    }

    /// A request is resent with a fresh token.
    pub(crate) fn resend(&self) {
        #[cfg(feature = "metrics")]
        metrics::counter!("token_refresh_resends_total", "provider" => self.provider.clone())
            .increment(1);
    }
}
