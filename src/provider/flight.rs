//! The refresh in flight: one task per refresh whose outcome every waiter shares, and its
//! hand-off between Tokio runtimes (a refresh stranded on a runtime that idles or shut down
//! is restarted by a waiter on its own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::token::AccessToken;

use super::cache::{Cached, later};
use super::{Inner, State, Want};

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

/// One refresh: a task on `runtime` that publishes its outcome.
pub(super) struct Flight {
    id: u64,
    started: Instant,
    runtime: Handle,
    outcome: watch::Sender<Outcome>,
    /// Whether a waiter is checking that `runtime` still runs the refresh.
    probing: AtomicBool,
    progress: Mutex<Progress>,
    /// The storm guard's interval, if a rejection forced this refresh: a store entry
    /// carries it to the rest of the fleet.
    pub(super) forced: Option<Duration>,
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

enum Waited {
    Done(Result<AccessToken>),
    Lost,
    TimedOut,
}

impl Inner {
    pub(super) async fn token_slow(self: &Arc<Self>, want: Want) -> Result<AccessToken> {
        if let Some(error) = &self.misconfigured {
            return Err(error.clone());
        }
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
                    if Cached::new(&self.config, token.clone()).usable(Instant::now()) {
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
            crate::quiet_panic::catch_quietly(|| drop(tokio::time::sleep(Duration::ZERO)))
                .is_some();
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
            forced: state.storm.take_forced(),
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
                    let result = guard.inner.fetch(&guard.flight).await;
                    guard.finish(result);
                }
                .instrument(span),
            ),
        );
        Ok(flight)
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

    pub(super) fn set_attempt(&self, attempt: u32) {
        self.lock_progress().attempt = attempt;
    }

    pub(super) fn set_last_error(&self, error: Error) {
        self.lock_progress().last_error = Some(error);
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
        inner.settle(&mut state, &result, self.flight.started.elapsed());
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

/// Clears a flag when dropped (a probe that finished or was cancelled).
struct ResetOnDrop<'a>(&'a AtomicBool);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
