//! The token cache: lazy, single-flight, proactively refreshed, and driven by whichever Tokio
//! runtime is alive.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::defaults::*;
use crate::error::{Error, Result};
use crate::health::{Health, Metrics};
use crate::source::TokenSource;
use crate::token::AccessToken;

/// Short tokens: the hard margin is at most this fraction (1/10) of the token's lifetime, so
/// a 59 s token is usable for 53 s instead of being "expired on arrival".
const HARD_MARGIN_DIVISOR: u32 = 10;

/// Short tokens: the proactive margin is at most this fraction (1/5) of the lifetime, so a
/// token is used for at least 80 % of its life before it is replaced.
const PROACTIVE_MARGIN_DIVISOR: u32 = 5;

/// How often a caller waiting on a refresh that runs on *another* Tokio runtime checks that
/// the runtime is still running it. A quarter second is short next to any token wait worth
/// noticing and costs one no-op task on that runtime per check.
const STALL_PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How long that check may take: a runtime that does not run a no-op task within a quarter
/// second is idle (its `block_on` returned) or gone, and the refresh is restarted here.
const STALL_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// How often a caller restarts a refresh that its *own* runtime dropped before giving up
/// with [`Error::RefreshAborted`]: only a runtime that is shutting down does that, and a
/// caller must not spin on it.
const MAX_LOCAL_RESTARTS: u32 = 3;

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
///   gRPC `UNAUTHENTICATED`, forces at most one refresh per interval, so an API that rejects
///   every token cannot turn each call into a token request.
///
/// Cloning is cheap and clones share the cache. Reading a cached token takes a read lock,
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
    cache: RwLock<Option<Cached>>,
    /// Whether a refresh is in flight (mirrors `state.flight`), so that callers in the
    /// proactive window keep the fast path while the background refresh runs.
    refreshing: AtomicBool,
    state: Mutex<State>,
    metrics: Metrics,
    /// Calls of the token source, for [`Health`].
    token_requests: AtomicU64,
    /// Refreshes forced by rejections, for [`Health`].
    forced_refreshes: AtomicU64,
}

#[derive(Clone, Debug)]
struct Config {
    name: String,
    hard_margin: Duration,
    proactive_margin: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_retry_after: Duration,
    retry_budget: Duration,
    cooldown: Duration,
    fetch_timeout: Duration,
    max_wait: Duration,
    forced_interval: Duration,
    forced_interval_max: Duration,
}

#[derive(Default)]
struct State {
    flight: Option<Arc<Flight>>,
    failure: Option<Failure>,
    next_flight_id: u64,
    storm: StormGuard,
    /// A runtime found to have no time driver, so it is not probed again.
    no_time: Option<tokio::runtime::Id>,
    consecutive_failures: u32,
    /// The error of the last refresh, if it failed.
    last_error: Option<Error>,
    /// When the last successful refresh completed.
    last_refresh: Option<SystemTime>,
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    /// From here on, the next caller starts a background refresh.
    refresh_at: Instant,
    /// From here on, the token is not handed out.
    usable_until: Instant,
}

/// One refresh: a task on `runtime` that publishes its outcome.
struct Flight {
    id: u64,
    started: Instant,
    runtime: Handle,
    outcome: watch::Sender<Outcome>,
    /// Whether a waiter is checking that `runtime` still runs the refresh.
    probing: AtomicBool,
    progress: Mutex<Progress>,
}

#[derive(Clone)]
enum Outcome {
    Pending,
    Ready(Result<AccessToken>),
    /// The task is gone without an outcome (its runtime shut down, or it was stranded on a
    /// runtime that stopped running it): a waiter starts a new refresh.
    Lost,
}

#[derive(Default)]
struct Progress {
    attempt: u32,
    last_error: Option<Error>,
}

struct Failure {
    error: Error,
    retry_at: Instant,
}

/// Rate limit of refreshes forced by rejections.
#[derive(Default)]
struct StormGuard {
    last_forced: Option<Instant>,
    interval: Duration,
}

/// What a caller needs from [`TokenProvider::token_with`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Want {
    /// The token must not expire sooner than this (capped at half its lifetime).
    pub(crate) min_validity: Duration,
    /// Give up waiting at this instant (never later than the provider's `max_wait`).
    pub(crate) deadline: Option<Instant>,
}

enum Waited {
    Done(Result<AccessToken>),
    Lost,
    TimedOut,
}

impl TokenProvider {
    /// A provider with the default margins and retry policy. Does no I/O.
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).build()
    }

    /// A builder to adjust margins and the retry policy.
    pub fn builder(source: impl TokenSource) -> TokenProviderBuilder {
        TokenProviderBuilder {
            source: Box::new(source),
            config: Config {
                name: "default".to_owned(),
                hard_margin: DEFAULT_HARD_MARGIN,
                proactive_margin: DEFAULT_PROACTIVE_MARGIN,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                backoff_base: DEFAULT_BACKOFF_BASE,
                backoff_max: DEFAULT_BACKOFF_MAX,
                max_retry_after: DEFAULT_MAX_RETRY_AFTER,
                retry_budget: DEFAULT_RETRY_BUDGET,
                cooldown: DEFAULT_COOLDOWN,
                fetch_timeout: DEFAULT_FETCH_TIMEOUT,
                max_wait: DEFAULT_MAX_WAIT,
                forced_interval: DEFAULT_FORCED_REFRESH_INTERVAL,
                forced_interval_max: MAX_FORCED_REFRESH_INTERVAL,
            },
        }
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
        match self.inner.fresh_token(Instant::now(), want.min_validity) {
            Some(token) => Ok(token),
            None => Inner::token_slow(&self.inner, want).await,
        }
    }

    /// Drops `token` from the cache if it is still the cached token (compared by identity,
    /// not value), so the next [`token`](Self::token) fetches a new one. Unconditional: for
    /// a server's rejection prefer [`reject`](Self::reject), which is rate-limited.
    pub fn invalidate(&self, token: &AccessToken) {
        let _state = self.inner.lock_state();
        if self.inner.drop_cached(token) {
            tracing::debug!("access token invalidated");
        }
    }

    /// Reports that a server rejected `token` (HTTP 401, gRPC `UNAUTHENTICATED`, a stream's
    /// in-band error). Returns whether asking for a token again can give a different one: the
    /// caller may then resend once with [`token`](Self::token), comparing the new token with
    /// the rejected one.
    ///
    /// If `token` is still the cached token it is dropped, forcing a refresh (a token past
    /// its hard margin is simply dropped: it was due anyway) — unless a refresh was forced
    /// less than the storm guard's interval ago, in which case it is kept
    /// and `false` is returned, so the caller returns the rejection as it is. The interval
    /// starts at [`DEFAULT_FORCED_REFRESH_INTERVAL`] and doubles, up to
    /// [`MAX_FORCED_REFRESH_INTERVAL`], each time a freshly fetched token is rejected before
    /// any request succeeded with it (an API that rejects every token); it falls back once a
    /// token has worked. A real revocation is therefore recovered from at once, and an API
    /// that rejects everything costs a handful of token requests, not one per call. A burst
    /// of rejections of one token forces one refresh: the others find it replaced.
    ///
    /// [`DEFAULT_FORCED_REFRESH_INTERVAL`]: crate::defaults::DEFAULT_FORCED_REFRESH_INTERVAL
    /// [`MAX_FORCED_REFRESH_INTERVAL`]: crate::defaults::MAX_FORCED_REFRESH_INTERVAL
    pub fn reject(&self, token: &AccessToken) -> bool {
        let mut state = self.inner.lock_state();
        let now = Instant::now();
        let usable = match self.inner.read_cache().as_ref() {
            Some(cached) if cached.token.ptr_eq(token) => now < cached.usable_until,
            // Already replaced, or being replaced: the current token may differ.
            _ => return true,
        };
        if !usable {
            // A token past its hard margin was due for a refresh anyway (a stream that
            // outlived it): dropping it forces nothing, so the guard is left alone.
            self.inner.drop_cached(token);
            return true;
        }
        let config = &self.inner.config;
        let guard = &mut state.storm;
        if let Some(last) = guard.last_forced
            && now < later(last, guard.interval)
        {
            tracing::debug!(
                retry_in_ms = (later(last, guard.interval) - now).as_millis() as u64,
                "rejected access token kept: a refresh was forced moments ago"
            );
            self.inner.metrics.forced_refresh(false);
            return false;
        }
        guard.interval = if token.was_accepted() || guard.last_forced.is_none() {
            config.forced_interval
        } else {
            // A token that never worked was rejected: fresh tokens do not seem to help.
            guard
                .interval
                .saturating_mul(2)
                .clamp(config.forced_interval, config.forced_interval_max)
        };
        guard.last_forced = Some(now);
        self.inner.drop_cached(token);
        self.inner.metrics.forced_refresh(true);
        self.inner.forced_refreshes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            next_forced_refresh_in_ms = guard.interval.as_millis() as u64,
            "access token rejected by the server: refreshing it"
        );
        true
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
        if let Some(cached) = &cached {
            inner.metrics.expiry(until(cached.token.expires_at()));
        }
        Health {
            token_cached: cached.is_some(),
            expires_in: cached.as_ref().map(|c| until(c.token.expires_at())),
            usable_for: cached.as_ref().map(|c| until(c.usable_until)),
            refresh_in: cached.as_ref().map(|c| until(c.refresh_at)),
            refreshing: state.flight.is_some(),
            consecutive_failures: state.consecutive_failures,
            last_error: state.last_error.clone(),
            last_refresh: state.last_refresh,
            token_requests: inner.token_requests.load(Ordering::Relaxed),
            forced_refreshes: inner.forced_refreshes.load(Ordering::Relaxed),
            cooling_down_for: state
                .failure
                .as_ref()
                .map(|f| until(f.retry_at))
                .filter(|d| !d.is_zero()),
        }
    }

    /// Counts a request resent after a rejection (for the metrics).
    #[cfg_attr(not(any(feature = "reqwest", feature = "tower")), allow(dead_code))]
    pub(crate) fn record_resend(&self) {
        self.inner.metrics.resend();
    }

    /// How much longer `token` will be handed out: the time until it reaches this provider's
    /// hard margin (zero once it has). The DT guide prints this as "Token expires in Ns.".
    pub fn usable_for(&self, token: &AccessToken) -> Duration {
        self.inner
            .config
            .cache_entry(token.clone())
            .usable_until
            .saturating_duration_since(Instant::now())
    }
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; recover rather than propagate if one did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, Option<Cached>> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, Option<Cached>> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops `token` if it is the cached one; `state` must be locked.
    fn drop_cached(&self, token: &AccessToken) -> bool {
        let mut cache = self.write_cache();
        let hit = cache.as_ref().is_some_and(|c| c.token.ptr_eq(token));
        if hit {
            *cache = None;
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

    async fn token_slow(self: &Arc<Self>, want: Want) -> Result<AccessToken> {
        let here = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        self.ensure_time(&here)?;
        let started = Instant::now();
        let max_deadline = later(started, self.config.max_wait);
        let deadline = want.deadline.map_or(max_deadline, |d| d.min(max_deadline));
        let mut local_restarts = 0;
        loop {
            let flight = match self.join_or_start(want.min_validity)? {
                Ok(token) => return Ok(token),
                Err(flight) => flight,
            };
            match self.wait(&flight, &here, deadline).await {
                Waited::Done(Ok(token)) => {
                    // Delivered too late to be used (a slow waiter): go round again.
                    if Instant::now() < self.config.cache_entry(token.clone()).usable_until {
                        return Ok(token);
                    }
                }
                Waited::Done(Err(error)) => return Err(error),
                Waited::Lost if flight.runtime.id() == here.id() => {
                    local_restarts += 1;
                    if local_restarts > MAX_LOCAL_RESTARTS {
                        return Err(Error::RefreshAborted);
                    }
                }
                Waited::Lost => {}
                Waited::TimedOut => {
                    let progress = flight.progress();
                    return Err(Error::WaitTimeout {
                        waited: started.elapsed(),
                        attempt: progress.attempt.max(1),
                        last_error: progress.last_error.map(Box::new),
                    });
                }
            }
        }
    }

    /// Under the state lock: a usable cached token (starting a background refresh if it is
    /// due), the refresh in flight to wait on, or a new one.
    fn join_or_start(
        self: &Arc<Self>,
        min: Duration,
    ) -> Result<std::result::Result<AccessToken, Arc<Flight>>> {
        let mut state = self.lock_state();
        let now = Instant::now();
        let cached = self.read_cache().clone();
        let usable = cached.filter(|c| now < c.usable_until);
        if let Some(cached) = &usable
            && cached.lasts(now, min)
        {
            if now >= cached.refresh_at {
                self.refresh_in_background(&mut state, now);
            }
            return Ok(Ok(cached.token.clone()));
        }
        if let Some(flight) = &state.flight {
            return Ok(Err(Arc::clone(flight)));
        }
        if let Some(failure) = &state.failure
            && now < failure.retry_at
        {
            // In the cool-down a token that is usable, if short of `min`, beats the error.
            return match usable {
                Some(cached) => Ok(Ok(cached.token)),
                None => Err(failure.error.clone()),
            };
        }
        self.start_flight(&mut state, false).map(Err)
    }

    /// Waits for `flight`'s outcome until `deadline`. A flight on another runtime is checked
    /// every [`STALL_PROBE_INTERVAL`]; if that runtime no longer runs it, it is marked lost.
    async fn wait(&self, flight: &Arc<Flight>, here: &Handle, deadline: Instant) -> Waited {
        let mut outcome = flight.outcome.subscribe();
        let foreign = flight.runtime.id() != here.id();
        loop {
            match &*outcome.borrow_and_update() {
                Outcome::Pending => {}
                Outcome::Ready(result) => return Waited::Done(result.clone()),
                Outcome::Lost => return Waited::Lost,
            }
            let now = Instant::now();
            if now >= deadline {
                return Waited::TimedOut;
            }
            let wake = if foreign {
                deadline.min(now + STALL_PROBE_INTERVAL)
            } else {
                deadline
            };
            // The sender lives in `flight`, which we hold: `changed` cannot fail.
            if tokio::time::timeout_at(wake, outcome.changed())
                .await
                .is_err()
                && foreign
                && Instant::now() < deadline
            {
                self.probe(flight).await;
            }
        }
    }

    /// Checks that `flight`'s runtime still runs tasks; takes the refresh over if not. One
    /// waiter probes at a time.
    async fn probe(&self, flight: &Arc<Flight>) {
        if flight.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let _reset = ResetOnDrop(&flight.probing);
        let ping = flight.runtime.spawn(async {});
        let alive = matches!(
            tokio::time::timeout(STALL_PROBE_TIMEOUT, ping).await,
            Ok(Ok(()))
        );
        if alive {
            return;
        }
        let mut state = self.lock_state();
        if state
            .flight
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            tracing::warn!(
                refresh_id = flight.id,
                "the token refresh is stranded on a Tokio runtime that no longer runs it; \
                 restarting it on this one"
            );
            self.set_flight(&mut state, None);
            flight.outcome.send_replace(Outcome::Lost);
        }
    }

    /// Fails with [`Error::TimeDisabled`] on a runtime without the time driver, instead of
    /// panicking in a timer later.
    fn ensure_time(&self, runtime: &Handle) -> Result<()> {
        let id = runtime.id();
        if self.lock_state().no_time == Some(id) {
            return Err(Error::TimeDisabled);
        }
        // Creating a timer is the only way to ask; it panics without the driver.
        let has_time =
            std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_ok();
        if !has_time {
            self.lock_state().no_time = Some(id);
            return Err(Error::TimeDisabled);
        }
        Ok(())
    }

    /// Sets or clears the in-flight refresh; `state` must be locked.
    fn set_flight(&self, state: &mut State, flight: Option<Arc<Flight>>) {
        self.refreshing.store(flight.is_some(), Ordering::Release);
        state.flight = flight;
    }

    /// Starts one background refresh unless one runs or a cool-down is on.
    fn refresh_in_background(self: &Arc<Self>, state: &mut State, now: Instant) {
        let cooling = state.failure.as_ref().is_some_and(|f| now < f.retry_at);
        if state.flight.is_none() && !cooling {
            tracing::debug!("access token nears expiry: refreshing it in the background");
            // Without a runtime the caller just keeps the valid token; the next one retries.
            let _ = self.start_flight(state, true);
        }
    }

    /// Spawns a refresh on the current runtime.
    fn start_flight(self: &Arc<Self>, state: &mut State, background: bool) -> Result<Arc<Flight>> {
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let id = state.next_flight_id;
        state.next_flight_id += 1;
        let flight = Arc::new(Flight {
            id,
            started: Instant::now(),
            runtime: runtime.clone(),
            outcome: watch::Sender::new(Outcome::Pending),
            probing: AtomicBool::new(false),
            progress: Mutex::default(),
        });
        self.set_flight(state, Some(Arc::clone(&flight)));
        let span = tracing::debug_span!(
            parent: None,
            "token_refresh",
            provider = %self.config.name,
            refresh_id = id,
            background
        );
        span.follows_from(tracing::Span::current());
        // Built outside the task, so that a task dropped before its first poll (its
        // runtime is shutting down) still reports the refresh lost.
        let guard = FlightGuard {
            inner: Arc::clone(self),
            flight: Arc::clone(&flight),
            finished: false,
        };
        drop(
            runtime.spawn(
                async move {
                    let mut guard = guard;
                    let result = guard.inner.fetch_with_retries(&guard.flight).await;
                    guard.finish(result);
                }
                .instrument(span),
            ),
        );
        Ok(flight)
    }

    async fn fetch_with_retries(&self, flight: &Flight) -> Result<AccessToken> {
        let config = &self.config;
        let started = Instant::now();
        let mut attempt = 1;
        tracing::debug!("token refresh started");
        loop {
            flight.lock_progress().attempt = attempt;
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
            let error = match result {
                Ok(token) => {
                    tracing::info!(
                        attempt,
                        expires_in_secs = token.expires_in().as_secs(),
                        "access token refreshed"
                    );
                    return Ok(token);
                }
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
                tracing::warn!(attempt, error = %error, "token refresh failed");
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
                attempt,
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "token request failed; retrying"
            );
            flight.lock_progress().last_error = Some(error);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// A token already inside its hard margin is a failed attempt: no caller may get it.
    fn check_usable(&self, token: AccessToken) -> Result<AccessToken> {
        let now = Instant::now();
        if now >= self.config.cache_entry(token.clone()).usable_until {
            return Err(Error::ExpiredOnArrival {
                lifetime: token.lifetime(),
                latency: now.saturating_duration_since(token.issued_at_instant()),
            });
        }
        Ok(token)
    }
}

impl Flight {
    fn lock_progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn progress(&self) -> Progress {
        let progress = self.lock_progress();
        Progress {
            attempt: progress.attempt,
            last_error: progress.last_error.clone(),
        }
    }
}

impl Cached {
    /// Whether the token lasts `min` from `now`, `min` capped at half its lifetime.
    fn lasts(&self, now: Instant, min: Duration) -> bool {
        min.is_zero()
            || self.token.expires_at().saturating_duration_since(now)
                >= min.min(self.token.lifetime() / 2)
    }
}

/// Publishes a refresh's outcome; if the task is dropped unfinished, reports it lost.
struct FlightGuard {
    inner: Arc<Inner>,
    flight: Arc<Flight>,
    finished: bool,
}

impl FlightGuard {
    fn finish(&mut self, result: Result<AccessToken>) {
        self.finished = true;
        let inner = &self.inner;
        let mut state = inner.lock_state();
        if !state
            .flight
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            // Taken over by a waiter on another runtime: its outcome decides.
            return;
        }
        inner.set_flight(&mut state, None);
        let elapsed = self.flight.started.elapsed();
        match &result {
            Ok(token) => {
                state.failure = None;
                state.consecutive_failures = 0;
                state.last_error = None;
                state.last_refresh = Some(SystemTime::now());
                *inner.write_cache() = Some(inner.config.cache_entry(token.clone()));
                inner.metrics.refresh(elapsed, Some(token.expires_in()));
            }
            Err(error) => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                state.last_error = Some(error.clone());
                inner.metrics.refresh(elapsed, None);
                let wait = error.retry_after().map_or(inner.config.cooldown, |asked| {
                    asked.min(MAX_COOLDOWN).max(inner.config.cooldown)
                });
                state.failure = Some(Failure {
                    error: error.clone(),
                    retry_at: later(Instant::now(), wait),
                });
            }
        }
        self.flight.outcome.send_replace(Outcome::Ready(result));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped unfinished: its runtime shut down (a panicking source is caught and
        // finishes normally). A waiting caller restarts the refresh.
        let mut state = self.inner.lock_state();
        if state
            .flight
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            self.inner.set_flight(&mut state, None);
        }
        tracing::debug!("token refresh dropped with its runtime; a waiting caller restarts it");
        self.flight.outcome.send_replace(Outcome::Lost);
    }
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

struct ResetOnDrop<'a>(&'a AtomicBool);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Config {
    /// Where `token`'s proactive and hard margins fall, both scaled down for short tokens.
    fn cache_entry(&self, token: AccessToken) -> Cached {
        let lifetime = token.lifetime();
        let hard = self.hard_margin.min(lifetime / HARD_MARGIN_DIVISOR);
        let proactive = self
            .proactive_margin
            .min(lifetime / PROACTIVE_MARGIN_DIVISOR)
            .max(hard);
        let expires_at = token.expires_at();
        let before = |margin| expires_at.checked_sub(margin).unwrap_or(expires_at);
        Cached {
            refresh_at: before(proactive),
            usable_until: before(hard),
            token,
        }
    }
}

/// `now + wait`, saturating where a huge setting would overflow `Instant`.
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
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

/// Adjusts a [`TokenProvider`]'s margins and retry policy; from [`TokenProvider::builder`].
pub struct TokenProviderBuilder {
    source: Box<dyn TokenSource>,
    config: Config,
}

impl TokenProviderBuilder {
    /// A token is not handed out this close to its expiry; callers wait for a new one.
    /// Scaled down to a tenth of the lifetime for short tokens. Default:
    /// [`DEFAULT_HARD_MARGIN`] (60 s).
    pub fn hard_margin(mut self, margin: Duration) -> Self {
        self.config.hard_margin = margin;
        self
    }

    /// This close to expiry, the next caller starts a background refresh and keeps the
    /// current token. Scaled down to a fifth of the lifetime for short tokens; never below
    /// the hard margin. [`Duration::ZERO`] turns proactive refresh off (refresh only when
    /// the hard margin is reached, with callers waiting). Default:
    /// [`DEFAULT_PROACTIVE_MARGIN`] (5 min).
    pub fn proactive_margin(mut self, margin: Duration) -> Self {
        self.config.proactive_margin = margin;
        self
    }

    /// Attempts per refresh, the first included (at least 1). Default:
    /// [`DEFAULT_MAX_ATTEMPTS`] (4).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// First and longest backoff delay between attempts. Defaults:
    /// [`DEFAULT_BACKOFF_BASE`] (250 ms) and [`DEFAULT_BACKOFF_MAX`] (8 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.backoff_base = base;
        self.config.backoff_max = max.max(base);
        self
    }

    /// Longest `Retry-After` waited out within a refresh; a longer one ends the refresh and
    /// sets the cool-down. Default: [`DEFAULT_MAX_RETRY_AFTER`] (30 s).
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = max;
        self
    }

    /// No retry starts later than this after a refresh's first attempt. Default:
    /// [`DEFAULT_RETRY_BUDGET`] (60 s).
    pub fn retry_budget(mut self, budget: Duration) -> Self {
        self.config.retry_budget = budget;
        self
    }

    /// After a failed refresh, callers without a valid token get its error at once for this
    /// long (or for the server's `Retry-After`, up to five minutes, if longer). Default:
    /// [`DEFAULT_COOLDOWN`] (5 s).
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.config.cooldown = cooldown;
        self
    }

    /// Timeout around one call of the token source. Default: [`DEFAULT_FETCH_TIMEOUT`]
    /// (30 s).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.config.fetch_timeout = timeout;
        self
    }

    /// Longest time a caller waits for a token; past it the caller gets
    /// [`Error::WaitTimeout`] and the refresh goes on for later callers. A request's own
    /// timeout (reqwest's `RequestBuilder::timeout`) shortens it for that request. Default:
    /// [`DEFAULT_MAX_WAIT`] (30 s).
    pub fn max_wait(mut self, max: Duration) -> Self {
        self.config.max_wait = max;
        self
    }

    /// The storm guard of [`TokenProvider::reject`]: the least time between two forced
    /// refreshes, and the longest it grows to while fresh tokens keep being rejected.
    /// Defaults: [`DEFAULT_FORCED_REFRESH_INTERVAL`] (5 s) and
    /// [`MAX_FORCED_REFRESH_INTERVAL`] (5 min).
    pub fn forced_refresh_interval(mut self, min: Duration, max: Duration) -> Self {
        self.config.forced_interval = min;
        self.config.forced_interval_max = max.max(min);
        self
    }

    /// Names the provider in its `tracing` spans and (feature `metrics`) as the `provider`
    /// label of its metrics, to tell several providers apart. Default: `default`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The provider. Does no I/O.
    pub fn build(self) -> TokenProvider {
        TokenProvider {
            inner: Arc::new(Inner {
                source: self.source,
                metrics: Metrics::new(&self.config.name),
                config: self.config,
                cache: RwLock::new(None),
                refreshing: AtomicBool::new(false),
                state: Mutex::new(State::default()),
                token_requests: AtomicU64::new(0),
                forced_refreshes: AtomicU64::new(0),
            }),
        }
    }
}

impl fmt::Debug for TokenProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProviderBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
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
