//! The token cache: lazy, single-flight, proactively refreshed.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::credentials::ServiceAccount;
use crate::error::{Error, Result};
use crate::jwt_bearer::JwtBearer;
use crate::source::TokenSource;
use crate::token::AccessToken;

/// Default hard margin: a token is not handed out in the last 60 s of its life. This is the
/// DT guide's buffer; it covers clock skew between us and the API and the time a request
/// spends in flight, so a token is never sent that expires before the server checks it.
pub const DEFAULT_HARD_MARGIN: Duration = Duration::from_secs(60);

/// Default proactive margin: five minutes before expiry one background refresh starts while
/// callers keep using the current token. Five minutes leaves room for a full retry cycle and
/// a few cool-downs before the hard margin is reached, yet uses 92 % of an hour-long token.
pub const DEFAULT_PROACTIVE_MARGIN: Duration = Duration::from_secs(300);

/// Short tokens: the hard margin is at most this fraction (1/10) of the token's lifetime, so
/// a 59 s token is usable for 53 s instead of being "expired on arrival".
const HARD_MARGIN_DIVISOR: u32 = 10;

/// Short tokens: the proactive margin is at most this fraction (1/5) of the lifetime, so a
/// token is used for at least 80 % of its life before it is replaced.
const PROACTIVE_MARGIN_DIVISOR: u32 = 5;

/// Default attempts per refresh (the first plus three retries): enough to ride out a
/// restarting endpoint or a dropped connection, few enough to give up within seconds.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;

/// Default first backoff delay; doubled per retry (with jitter) up to [`DEFAULT_BACKOFF_MAX`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(250);

/// Default longest backoff delay between two attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(8);

/// Default cap on a server's `Retry-After` that the provider waits out within one refresh.
/// A longer request ends the refresh with the error, and the cool-down honours it instead,
/// so callers are told at once rather than kept waiting.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Default bound on the retry delays of one refresh: no retry starts later than this after
/// the first attempt, so a caller waits at most this plus one request timeout. Twice
/// [`DEFAULT_MAX_RETRY_AFTER`], so a full `Retry-After` wait still fits after a few attempts.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// Default cool-down after a failed refresh: for this long, callers without a valid token
/// get the last error at once instead of starting another refresh. Five seconds keeps a
/// dead endpoint from being hammered by every request and still notices recovery quickly.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(5);

/// Longest cool-down a server's `Retry-After` can impose: beyond five minutes a bad header
/// would do more harm (an hour of failed calls) than an extra request would.
const MAX_COOLDOWN: Duration = Duration::from_secs(300);

/// Default timeout around one call of the [`TokenSource`], so a custom source that never
/// answers cannot hang every caller. [`JwtBearer`]'s own request timeout is shorter.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Caches an access token and refreshes it before it expires.
///
/// - **Lazy**: nothing happens until the first [`token`](Self::token).
/// - **Single-flight**: concurrent callers share one refresh and its outcome.
/// - **Cancellation-safe**: the refresh runs in its own task; a caller that is dropped
///   neither wedges the provider nor cancels the refresh others wait on.
/// - **Proactive**: once a token enters its proactive margin, the next caller starts one
///   background refresh and keeps using the current token, so no request waits on the
///   regular refresh. Past the hard margin callers wait for the new token.
/// - **Resilient**: transient failures are retried with exponential backoff, jitter and
///   `Retry-After`; permanent ones fail fast. A failed refresh keeps a still-valid token,
///   and for a short cool-down callers without a valid token get the last error at once.
///
/// Cloning is cheap and clones share the cache. Reading a cached token takes a read lock,
/// reads the clock and clones an [`Arc`]: no await, no allocation. Time is [`tokio::time`],
/// so tests can pause it. Needs a Tokio runtime.
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
    /// Whether a refresh is in flight (mirrors `state.refresh`), so that callers in the
    /// proactive window keep the fast path while the background refresh runs.
    refreshing: AtomicBool,
    state: Mutex<State>,
}

#[derive(Clone, Debug)]
struct Config {
    hard_margin: Duration,
    proactive_margin: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_retry_after: Duration,
    retry_budget: Duration,
    cooldown: Duration,
    fetch_timeout: Duration,
}

#[derive(Default)]
struct State {
    refresh: Option<Refresh>,
    failure: Option<Failure>,
    next_refresh_id: u64,
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    /// From here on, the next caller starts a background refresh.
    refresh_at: Instant,
    /// From here on, the token is not handed out.
    usable_until: Instant,
}

type Outcome = Option<Result<AccessToken>>;

struct Refresh {
    id: u64,
    outcome: watch::Receiver<Outcome>,
}

struct Failure {
    error: Error,
    retry_at: Instant,
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
                hard_margin: DEFAULT_HARD_MARGIN,
                proactive_margin: DEFAULT_PROACTIVE_MARGIN,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                backoff_base: DEFAULT_BACKOFF_BASE,
                backoff_max: DEFAULT_BACKOFF_MAX,
                max_retry_after: DEFAULT_MAX_RETRY_AFTER,
                retry_budget: DEFAULT_RETRY_BUDGET,
                cooldown: DEFAULT_COOLDOWN,
                fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            },
        }
    }

    /// A provider for the service account that [`ServiceAccount::discover`] finds, using
    /// [`JwtBearer`] with the account's token endpoint (DT's by default).
    pub fn discover() -> Result<Self> {
        Ok(Self::new(JwtBearer::new(ServiceAccount::discover()?)))
    }

    /// A valid access token: the cached one, or a fresh one if there is none usable.
    ///
    /// Concurrent callers share one refresh. Fails with the refresh's error, or during the
    /// cool-down after a failed refresh with that error, when no valid token is cached.
    pub async fn token(&self) -> Result<AccessToken> {
        match self.inner.fresh_token(Instant::now()) {
            Some(token) => Ok(token),
            None => self.token_slow().await,
        }
    }

    /// Drops `token` from the cache if it is still the cached token (compared by identity,
    /// not value), so the next [`token`](Self::token) fetches a new one. Call it when a
    /// server rejects the token; a burst of rejections of one token causes one refresh.
    pub fn invalidate(&self, token: &AccessToken) {
        let _state = self.inner.lock_state();
        let mut cache = self.inner.write_cache();
        if cache
            .as_ref()
            .is_some_and(|cached| cached.token.ptr_eq(token))
        {
            *cache = None;
            tracing::debug!("access token invalidated");
        }
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

    async fn token_slow(&self) -> Result<AccessToken> {
        let mut outcome = {
            let mut state = self.inner.lock_state();
            let now = Instant::now();
            let cached = self.inner.read_cache().clone();
            if let Some(cached) = cached
                && now < cached.usable_until
            {
                if now >= cached.refresh_at {
                    self.inner.refresh_in_background(&mut state, now);
                }
                return Ok(cached.token);
            }
            match &state.refresh {
                Some(refresh) => refresh.outcome.clone(),
                None => {
                    if let Some(failure) = &state.failure
                        && now < failure.retry_at
                    {
                        return Err(failure.error.clone());
                    }
                    Inner::start_refresh(&self.inner, &mut state)?
                }
            }
        };
        let outcome = outcome.wait_for(Option::is_some).await;
        match outcome.as_deref() {
            Ok(Some(result)) => result.clone(),
            // The refresh task was dropped (its runtime shut down) before it finished.
            Ok(None) | Err(_) => Err(Error::RefreshAborted),
        }
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

    /// The fast path: the cached token if it is before its proactive refresh point, or
    /// still usable while its replacement is being fetched.
    fn fresh_token(&self, now: Instant) -> Option<AccessToken> {
        let cache = self.read_cache();
        let cached = cache.as_ref()?;
        let fresh = now < cached.refresh_at
            || (now < cached.usable_until && self.refreshing.load(Ordering::Acquire));
        fresh.then(|| cached.token.clone())
    }

    /// Sets or clears the in-flight refresh; `state` must be locked.
    fn set_refresh(&self, state: &mut State, refresh: Option<Refresh>) {
        self.refreshing.store(refresh.is_some(), Ordering::Release);
        state.refresh = refresh;
    }

    /// Starts one background refresh unless one runs or a cool-down is on.
    fn refresh_in_background(self: &Arc<Self>, state: &mut State, now: Instant) {
        let cooling = state.failure.as_ref().is_some_and(|f| now < f.retry_at);
        if state.refresh.is_none() && !cooling {
            tracing::debug!("access token nears expiry: refreshing in the background");
            // Without a runtime the caller just keeps the valid token; the next one retries.
            let _ = Self::start_refresh(self, state);
        }
    }

    /// Spawns the refresh task; the returned receiver yields its outcome.
    fn start_refresh(self: &Arc<Self>, state: &mut State) -> Result<watch::Receiver<Outcome>> {
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (sender, receiver) = watch::channel(None);
        let id = state.next_refresh_id;
        state.next_refresh_id += 1;
        self.set_refresh(
            state,
            Some(Refresh {
                id,
                outcome: receiver.clone(),
            }),
        );
        let inner = Arc::clone(self);
        runtime.spawn(async move {
            // If this task is dropped unfinished, the guard clears the in-flight marker so
            // the next caller starts afresh; waiters see the sender go and fail at once.
            let _guard = RefreshGuard { inner: &inner, id };
            let outcome = inner.fetch_with_retries().await;
            inner.finish_refresh(id, &outcome);
            let _ = sender.send(Some(outcome));
        });
        Ok(receiver)
    }

    async fn fetch_with_retries(&self) -> Result<AccessToken> {
        let config = &self.config;
        let started = Instant::now();
        let mut attempt = 1;
        tracing::debug!("token refresh started");
        loop {
            let result =
                match tokio::time::timeout(config.fetch_timeout, self.source.fetch_token()).await {
                    Ok(result) => result.and_then(check_usable),
                    Err(_) => Err(Error::Timeout(config.fetch_timeout)),
                };
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
                return Err(error);
            }
            tracing::warn!(
                attempt,
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "token request failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn finish_refresh(&self, id: u64, outcome: &Result<AccessToken>) {
        let mut state = self.lock_state();
        if state.refresh.as_ref().is_some_and(|r| r.id == id) {
            self.set_refresh(&mut state, None);
        }
        let now = Instant::now();
        match outcome {
            Ok(token) => {
                state.failure = None;
                *self.write_cache() = Some(self.config.cache_entry(token.clone()));
            }
            Err(error) => {
                let wait = error.retry_after().map_or(self.config.cooldown, |asked| {
                    asked.min(MAX_COOLDOWN).max(self.config.cooldown)
                });
                state.failure = Some(Failure {
                    error: error.clone(),
                    retry_at: later(now, wait),
                });
            }
        }
    }
}

struct RefreshGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for RefreshGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.lock_state();
        if state.refresh.as_ref().is_some_and(|r| r.id == self.id) {
            self.inner.set_refresh(&mut state, None);
            if std::thread::panicking() {
                // The token source panicked: cool down as after any failure, so callers are
                // not each re-running a source that panics.
                tracing::error!("the token source panicked during a refresh");
                state.failure = Some(Failure {
                    error: Error::RefreshAborted,
                    retry_at: later(Instant::now(), self.inner.config.cooldown),
                });
            }
        }
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

fn check_usable(token: AccessToken) -> Result<AccessToken> {
    if token.expires_at() <= Instant::now() {
        return Err(Error::InvalidToken(
            "the token source returned a token that has already expired",
        ));
    }
    Ok(token)
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

    /// The provider. Does no I/O.
    pub fn build(self) -> TokenProvider {
        TokenProvider {
            inner: Arc::new(Inner {
                source: self.source,
                config: self.config,
                cache: RwLock::new(None),
                refreshing: AtomicBool::new(false),
                state: Mutex::new(State::default()),
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
            .field("refreshing", &state.refresh.is_some())
            .field("last_error", &state.failure.as_ref().map(|f| &f.error));
        }
        s.field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}
