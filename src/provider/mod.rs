//! The token cache: lazy, single-flight, proactively refreshed, and driven by whichever Tokio
//! runtime is alive.
//!
//! One file per concern: this one holds the provider's public face and its fast path;
//! [`cache`] where a token's refresh points fall, [`flight`] the shared refresh and its
//! hand-off between runtimes, [`retry`] the failure policy (backoff, cool-down), [`storm`]
//! what a rejection may cost, [`fleet`] the sharing through a token store, [`config`] the
//! settings and [`builder`] what sets them.

mod builder;
mod cache;
mod config;
mod fleet;
mod flight;
mod keyed;
mod retry;
mod storm;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use arc_swap::ArcSwapOption;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::health::{Health, Metrics};
use crate::quiet_panic::Passed;
use crate::source::TokenSource;
use crate::token::AccessToken;

pub use builder::TokenProviderBuilder;
use cache::Cached;
use config::Config;
use fleet::Fleet;
use flight::{Flight, Reason};
pub use keyed::{KeyedTokenProvider, KeyedTokenProviderBuilder};
use retry::Failure;
use storm::StormGuard;

/// Caches an access token and refreshes it before it expires.
///
/// - **Lazy**: nothing happens until the first [`token`](Self::token).
/// - **Single-flight**: concurrent callers share one refresh and its outcome.
/// - **Cancellation-safe**: the refresh runs in its own task; a caller that is dropped
///   neither wedges the provider nor cancels the refresh others wait on.
/// - **Proactive**: once a token enters its proactive margin, the next caller starts one
///   background refresh and keeps using the current token, so no request waits on the
///   regular refresh. Past the hard margin callers wait for the new token, and no token
///   inside its hard margin is ever handed out.
/// - **Resilient**: transient failures are retried with exponential backoff, jitter and
///   `Retry-After`; permanent ones fail fast. A failed refresh keeps a still-valid token,
///   and for a short cool-down callers without a valid token get the last error at once.
/// - **Bounded**: no caller waits longer than [`max_wait`](TokenProviderBuilder::max_wait)
///   (default 30 s) for a token.
/// - **Runtime-independent**: one provider may serve any number of Tokio runtimes. The
///   refresh runs on the runtime of the caller that started it; a caller on another runtime
///   checks that it is still being run, and restarts it on its own runtime if that runtime
///   went idle or shut down. No caller waits on a refresh that nothing drives.
/// - **Storm-proof**: [`reject`](Self::reject), which both integrations call for a 401 or
///   gRPC `UNAUTHENTICATED`, refreshes a revoked token (one the API had accepted) at once,
///   within an allowance, and forces at most one refresh per interval for tokens rejected
///   before they ever worked, so an API that rejects every token cannot turn each call into
///   a token request.
///
/// Cloning is cheap and clones share the cache. Reading a cached token takes no lock (an atomic load),
/// reads the clock and clones an [`Arc`]: no await, no allocation. Time is [`tokio::time`],
/// so tests can pause it. Needs a Tokio runtime with the time driver.
///
/// ```
/// use std::time::Duration;
/// use token_refresh::{AccessToken, TokenProvider};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), token_refresh::Error> {
/// let provider = TokenProvider::builder(|| async {
///     AccessToken::new("t0k3n", Duration::from_secs(3600))
/// })
/// .hard_margin(Duration::from_secs(60))
/// .proactive_margin(Duration::from_secs(300))
/// .build();
///
/// let token = provider.token().await?;
/// assert_eq!(token.header_value().to_str().unwrap(), "Bearer t0k3n");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenProvider {
    inner: Arc<Inner>,
}

struct Inner {
    source: Box<dyn TokenSource>,
    config: Config,
    /// The cached token with its refresh points: read on the fast path, written only with
    /// `state` held.
    cache: ArcSwapOption<Cached>,
    /// Whether a refresh is in flight (mirrors `state.flight`), so that callers in the
    /// proactive window keep the fast path while the background refresh runs.
    refreshing: AtomicBool,
    /// The refresh in flight (mirrors `state.flight`): a cold herd joins it under a read
    /// lock instead of queueing on `state`.
    in_flight: RwLock<Option<Arc<Flight>>>,
    /// A hash of the last runtime found to have a time driver, so that a caller on it skips
    /// the probe (0: none yet).
    time_checked: Passed,
    state: Mutex<State>,
    metrics: Metrics,
    /// Calls of the token source, for [`Health`].
    token_requests: AtomicU64,
    /// Refreshes forced by rejections, for [`Health`].
    forced_refreshes: AtomicU64,
    /// Requests the integrations sent again with a DPoP nonce, for [`Health`].
    nonce_resends: AtomicU64,
    /// The token store shared with other processes, if any.
    fleet: Option<Fleet>,
    /// Why the provider cannot work (a store it was built with is refused): every caller
    /// gets this.
    misconfigured: Option<Error>,
    /// When the provider was built (wall clock): when a refused store became its error.
    created: SystemTime,
}

/// What changes only under the state lock.
#[derive(Default)]
struct State {
    flight: Option<Arc<Flight>>,
    failure: Option<Failure>,
    next_flight_id: u64,
    /// Why the next refresh will run, when an invalidation or a rejection decided it.
    pending: Option<Reason>,
    storm: StormGuard,
    /// A runtime found to have no time driver, so it is not probed again.
    no_time: Option<tokio::runtime::Id>,
    consecutive_failures: u32,
    /// The error of the last refresh, if it failed.
    last_error: Option<Error>,
    /// When the last successful refresh completed.
    last_refresh: Option<SystemTime>,
}

/// What a caller needs from [`TokenProvider::token_with`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Want {
    /// The token must not expire sooner than this (capped at half its lifetime).
    pub(crate) min_validity: Duration,
    /// Give up waiting at this instant (never later than the provider's `max_wait`).
    pub(crate) deadline: Option<Instant>,
}

impl TokenProvider {
    /// A provider with the default margins and retry policy. Does no I/O.
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).build()
    }

    /// A builder to adjust margins and the retry policy.
    pub fn builder(source: impl TokenSource) -> TokenProviderBuilder {
        TokenProviderBuilder::new(Box::new(source))
    }

    /// A valid access token: the cached one, or a fresh one if there is none usable.
    ///
    /// Concurrent callers share one refresh. Fails with the refresh's error, or during the
    /// cool-down after a failed refresh with that error, when no valid token is cached; with
    /// [`Error::WaitTimeout`] after waiting [`max_wait`](TokenProviderBuilder::max_wait).
    pub async fn token(&self) -> Result<AccessToken> {
        self.token_with(Want::default()).await
    }

    /// A token that does not expire for at least `min` (for a long request, or a stream
    /// that must outlive the next minutes): the cached one if it lasts that long, else a
    /// fresh one (one refresh shared by all callers, as always).
    ///
    /// A token cannot last longer than it lives: at most half the token's lifetime is
    /// demanded, so a `min` beyond what the token source issues causes no refresh storm. If
    /// a fresh token still falls short, it is returned all the same: it is the best there
    /// is. The request extension [`MinValidity`](crate::MinValidity) asks for the same
    /// through the integrations.
    pub async fn token_valid_for(&self, min: Duration) -> Result<AccessToken> {
        self.token_with(Want {
            min_validity: min,
            deadline: None,
        })
        .await
    }

    /// The cached token if it can be used right now without waiting: the integrations'
    /// fast path.
    #[cfg_attr(not(any(feature = "reqwest", feature = "tower")), allow(dead_code))]
    pub(crate) fn cached(&self, min_validity: Duration) -> Option<AccessToken> {
        self.inner.fresh_token(Instant::now(), min_validity)
    }

    pub(crate) async fn token_with(&self, want: Want) -> Result<AccessToken> {
        let now = Instant::now();
        match self.inner.fresh_token(now, want.min_validity) {
            Some(token) => Ok(token),
            // Boxed, so that a caller's future is as small as the fast path needs: the
            // tasks of a herd of 10,000 waiting callers then take half the memory, which
            // wakes them measurably faster.
            None => Box::pin(Inner::token_slow(&self.inner, want, now)).await,
        }
    }

    /// Drops `token` from the cache if it is still the cached token (compared by identity,
    /// not value), so the next [`token`](Self::token) fetches a new one; with a
    /// [token store](crate::store), that refresh also removes it from the store if it is
    /// still there, rather than take it back. Unconditional: for a server's rejection
    /// prefer [`reject`](Self::reject), which is rate-limited.
    pub fn invalidate(&self, token: &AccessToken) {
        let mut state = self.inner.lock_state();
        if self.inner.drop_cached(token) {
            state.pending = Some(Reason::Invalidated);
            if let Some(fleet) = &self.inner.fleet {
                fleet.rejected(token);
            }
            tracing::debug!(provider = %self.inner.config.name, "access token invalidated");
        }
    }

    /// A snapshot of the provider's state, for readiness probes and dashboards: whether a
    /// token is cached and for how long, whether a refresh is running, failures in a row and
    /// the last error. Cheap: one uncontended lock and a clock read. See [`Health`].
    pub fn health(&self) -> Health {
        let inner = &self.inner;
        let state = inner.lock_state();
        let now = Instant::now();
        let cached = inner.read_cache().clone();
        let until = |at: Instant| at.saturating_duration_since(now);
        inner
            .metrics
            .ready(cached.as_ref().is_some_and(|c| c.usable(now)));
        // A store the provider was built with and cannot use fails every call: say so.
        let store_error = match (&inner.fleet, &inner.misconfigured) {
            (Some(fleet), _) => fleet.status.last_error(),
            (None, Some(error)) => Some((error.to_string(), inner.created)),
            (None, None) => None,
        };
        Health {
            token_cached: cached.is_some(),
            expires_in: cached.as_ref().map(|c| until(c.token.expires_at())),
            usable_for: cached.as_ref().map(|c| until(c.usable_until)),
            refresh_in: cached.as_ref().map(|c| until(c.refresh_at)),
            refreshing: state.flight.is_some(),
            consecutive_failures: state.consecutive_failures,
            last_error: state
                .last_error
                .clone()
                .or_else(|| inner.misconfigured.clone()),
            last_refresh: state.last_refresh,
            token_requests: inner.token_requests.load(Ordering::Relaxed),
            forced_refreshes: inner.forced_refreshes.load(Ordering::Relaxed),
            dpop_nonce_resends: inner.nonce_resends.load(Ordering::Relaxed),
            cooling_down_for: state
                .failure
                .as_ref()
                .map(|f| until(f.retry_at))
                .filter(|d| !d.is_zero()),
            store_ok: match (&inner.fleet, &inner.misconfigured) {
                (Some(fleet), _) => Some(fleet.status.ok()),
                (None, Some(_)) => Some(false),
                (None, None) => None,
            },
            store_error_at: store_error.as_ref().map(|(_, at)| *at),
            store_error: store_error.map(|(text, _)| text),
        }
    }

    /// Counts a request resent after a rejection (for the metrics).
    #[cfg_attr(not(any(feature = "reqwest", feature = "tower")), allow(dead_code))]
    pub(crate) fn record_resend(&self) {
        self.inner.metrics.resend();
    }

    /// Counts a request sent again with the server's DPoP nonce (for `Health` and the
    /// metrics).
    #[cfg_attr(not(any(feature = "reqwest", feature = "tower")), allow(dead_code))]
    pub(crate) fn record_nonce_resend(&self) {
        self.inner.nonce_resends.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.nonce_resend();
    }

    /// How much longer `token` will be handed out: the time until it reaches this provider's
    /// hard margin (zero once it has). The DT guide prints this as "Token expires in Ns.".
    pub fn usable_for(&self, token: &AccessToken) -> Duration {
        cache::usable_until(&self.inner.config, token).saturating_duration_since(Instant::now())
    }
}

impl Inner {
    fn new(
        source: Box<dyn TokenSource>,
        metrics: Metrics,
        config: Config,
        fleet: std::result::Result<Option<Fleet>, Error>,
    ) -> Self {
        let (fleet, misconfigured) = match fleet {
            Ok(fleet) => (fleet, None),
            Err(error) => (None, Some(error)),
        };
        if let Some(fleet) = &fleet {
            // The store gauge, too, exists from the start: healthy until a call fails.
            fleet.status.set_metrics(metrics.clone());
        }
        // The `ready` gauge exists from the start, so a dashboard sees a provider that never
        // got a token.
        metrics.ready(false);
        Self {
            source,
            metrics,
            config,
            cache: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
            in_flight: RwLock::new(None),
            time_checked: Passed::new(),
            state: Mutex::new(State::default()),
            token_requests: AtomicU64::new(0),
            forced_refreshes: AtomicU64::new(0),
            nonce_resends: AtomicU64::new(0),
            fleet,
            misconfigured,
            created: SystemTime::now(),
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; recover rather than propagate if one did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached token with its refresh points, read without a lock.
    fn read_cache(&self) -> arc_swap::Guard<Option<Arc<Cached>>> {
        self.cache.load()
    }

    /// Caches `cached` (or nothing); `state` must be locked, so that writers never race.
    fn write_cache(&self, cached: Option<Cached>) {
        self.cache.store(cached.map(Arc::new));
    }

    /// Drops `token` if it is the cached one; `state` must be locked.
    fn drop_cached(&self, token: &AccessToken) -> bool {
        let hit = self
            .read_cache()
            .as_ref()
            .is_some_and(|c| c.token.ptr_eq(token));
        if hit {
            self.write_cache(None);
        }
        hit
    }

    /// The fast path: the cached token if it is before its proactive refresh point, or
    /// still usable while its replacement is being fetched — and lasts `min` if asked.
    fn fresh_token(&self, now: Instant, min: Duration) -> Option<AccessToken> {
        let cache = self.read_cache();
        let cached = cache.as_ref()?;
        let fresh = now < cached.refresh_at
            || (now < cached.usable_until && self.refreshing.load(Ordering::Acquire));
        (fresh && cached.lasts(now, min)).then(|| cached.token.clone())
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("TokenProvider");
        if let Ok(state) = self.inner.state.try_lock() {
            s.field(
                "token",
                &self.inner.read_cache().as_ref().map(|c| c.token.clone()),
            )
            .field("refreshing", &state.flight.is_some())
            .field("last_error", &state.failure.as_ref().map(|f| &f.error));
        }
        s.field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}
