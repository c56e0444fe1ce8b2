//! The failure policy: retries with backoff, jitter and `Retry-After` within one refresh, and
//! what a refresh's outcome leaves behind (the new token, or the error and a cool-down).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::defaults::MAX_COOLDOWN;
use crate::error::{Error, Result};
use crate::token::AccessToken;

use super::cache::{self, Cached, later};
use super::config::Config;
use super::flight::Flight;
use super::{Inner, State};

/// A failed refresh: callers without a valid token get `error` until `retry_at`.
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) retry_at: Instant,
}

impl Inner {
    /// One refresh: calls the token source until it succeeds, fails for good, or the retry
    /// policy gives up.
    pub(super) async fn fetch_with_retries(&self, flight: &Flight) -> Result<AccessToken> {
        let config = &self.config;
        let started = Instant::now();
        let mut attempt = 1;
        tracing::debug!(reason = flight.reason.as_str(), "token refresh started");
        loop {
            flight.set_attempt(attempt);
            let fetch = CatchUnwind(self.source.fetch_token());
            let result = match tokio::time::timeout(config.fetch_timeout, fetch).await {
                Ok(Ok(result)) => result.and_then(|token| self.check_usable(token)),
                Ok(Err(_panic)) => {
                    // Reported as a failure like any other, so callers are not each
                    // re-running a source that panics: the cool-down applies.
                    tracing::error!("the token source panicked during a refresh");
                    Err(Error::RefreshAborted)
                }
                Err(_) => Err(Error::Timeout(config.fetch_timeout)),
            };
            self.metrics.token_request(&result);
            self.token_requests.fetch_add(1, Ordering::Relaxed);
            // Success is logged where the refresh ends, whatever served it (see `flight`).
            let error = match result {
                Ok(token) => return Ok(token),
                Err(error) => error,
            };
            let delay = error
                .retry_after()
                .unwrap_or_else(|| backoff(config, attempt));
            let give_up = !error.is_transient()
                || attempt >= config.max_attempts
                || delay > config.max_retry_after
                || started.elapsed().saturating_add(delay) > config.retry_budget;
            if give_up {
                tracing::warn!(
                    provider = %self.config.name,
                    reason = flight.reason.as_str(),
                    attempt,
                    error = %error,
                    "token refresh failed"
                );
                return Err(if attempt > 1 {
                    Error::Retried {
                        attempts: attempt,
                        elapsed: started.elapsed(),
                        last: Box::new(error),
                    }
                } else {
                    error
                });
            }
            tracing::warn!(
                provider = %self.config.name,
                attempt,
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "token request failed; retrying"
            );
            flight.set_last_error(error);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// A token already inside its hard margin is a failed attempt: no caller may get it.
    fn check_usable(&self, token: AccessToken) -> Result<AccessToken> {
        let now = Instant::now();
        if !cache::usable(&self.config, &token, now) {
            return Err(Error::ExpiredOnArrival {
                lifetime: token.lifetime(),
                latency: now.saturating_duration_since(token.issued_at_instant()),
            });
        }
        Ok(token)
    }

    /// Records a finished refresh that took `elapsed`; `state` is locked. A success caches
    /// the token and clears the failure; a failure keeps whatever token is cached (it may
    /// still be valid) and starts the cool-down.
    pub(super) fn settle(
        &self,
        state: &mut State,
        result: &Result<AccessToken>,
        elapsed: Duration,
    ) {
        match result {
            Ok(token) => {
                state.failure = None;
                state.consecutive_failures = 0;
                state.last_error = None;
                state.last_refresh = Some(SystemTime::now());
                self.write_cache(Some(Cached::new(&self.config, token.clone())));
                self.metrics.refresh(elapsed, Some(token.expires_in()));
            }
            Err(error) => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                state.last_error = Some(error.clone());
                self.metrics.refresh(elapsed, None);
                let wait = error.retry_after().map_or(self.config.cooldown, |asked| {
                    asked.min(MAX_COOLDOWN).max(self.config.cooldown)
                });
                state.failure = Some(Failure {
                    error: error.clone(),
                    retry_at: later(Instant::now(), wait),
                });
            }
        }
        let ready = self
            .read_cache()
            .as_ref()
            .is_some_and(|c| c.usable(Instant::now()));
        self.metrics.ready(ready);
    }
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random, so retries
/// from many processes spread out but never come back immediately.
fn backoff(config: &Config, attempt: u32) -> Duration {
    let exp = config
        .backoff_base
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(config.backoff_max);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Polls a token source's future, turning a panic into an `Err`.
struct CatchUnwind<'a>(Pin<Box<dyn Future<Output = Result<AccessToken>> + Send + 'a>>);

impl Future for CatchUnwind<'_> {
    type Output = std::thread::Result<Result<AccessToken>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fetch = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| fetch.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
